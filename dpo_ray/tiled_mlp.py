"""Tiled MLPs for long sequences (model.mlp_tiles): each decoder layer's MLP runs over its tokens a tile at a time
and keeps only its input for backward, which recomputes each tile. A SwiGLU MLP otherwise keeps 4 intermediate-size
tensors per token (gate, up, activation, product: at 70B 28672 x 4 values a token, most of a layer's activations),
and with gradient checkpointing the layer being recomputed keeps them for the whole micro-batch. Every rank runs the
same number of tiles (ZeRO-3 gathers the MLP's weights for each), and DeepSpeed reduces a weight's gradient once,
after the last tile (its ds_grad_is_ready flag, as DeepSpeed's own TiledMLP sets it)."""

from __future__ import annotations

import functools
import itertools

import torch

SWIGLU = ("gate_proj", "up_proj", "down_proj")


class _Tiled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mlp, x: torch.Tensor, tiles: int) -> torch.Tensor:
        ctx.mlp, ctx.tiles = mlp, tiles
        ctx.save_for_backward(x)
        flat = x.reshape(-1, x.shape[-1])
        with torch.no_grad():
            out = torch.cat([_forward(mlp, piece) for piece in torch.tensor_split(flat, tiles)])
        return out.reshape(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        flat, grad = x.detach().reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
        x_grad = torch.zeros_like(flat)
        trained = [p for p in ctx.mlp.parameters() if p.requires_grad]
        sizes = [piece.shape[0] for piece in torch.tensor_split(flat, ctx.tiles)]
        for i, (lo, n) in enumerate(zip(itertools.accumulate(sizes, initial=0), sizes)):
            for p in trained:  # DeepSpeed adds a gradient to its reduce bucket once it is whole
                p.ds_grad_is_ready = i == ctx.tiles - 1
            piece = flat[lo : lo + n].detach().requires_grad_(ctx.needs_input_grad[1])
            with torch.enable_grad():
                out = _forward(ctx.mlp, piece)
            torch.autograd.backward(out, grad[lo : lo + n])
            if piece.grad is not None:
                x_grad[lo : lo + n] = piece.grad
        return None, x_grad.reshape(x.shape), None


def _forward(mlp, x: torch.Tensor) -> torch.Tensor:
    return type(mlp).forward(mlp, x)  # the class's own forward: the instance's is the tiled one


def tiled_forward(mlp, tiles: int, x: torch.Tensor) -> torch.Tensor:
    return _Tiled.apply(mlp, x, tiles)


def tile_mlps(model: torch.nn.Module, tiles: int) -> int:
    """Every SwiGLU MLP of the model (gate, up and down projections: Llama, Qwen, Mistral, Gemma) runs in tiles;
    returns how many."""
    mlps = [m for name, m in model.named_modules() if name.endswith("mlp") and all(hasattr(m, a) for a in SWIGLU)]
    for mlp in mlps:
        mlp.forward = functools.partial(tiled_forward, mlp, tiles)
    return len(mlps)
