"""Tiled MLPs (model.mlp_tiles): the same log-probs, loss and gradients as whole MLPs, with each layer's MLP keeping
only its input for backward."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dpo_ray.data.batches import step_scale
from dpo_ray.data.collate import BatchLayout, collate_pairs
from dpo_ray.logprobs import forward_pairs, install_scoring_head
from dpo_ray.objective import micro_batch_objective
from dpo_ray.schema import AlgoConfig
from dpo_ray.sizing.memory_estimate import layer_activation_bytes
from dpo_ray.sizing.model_shape import ModelShape
from dpo_ray.tiled_mlp import tile_mlps

from .conftest import TINY_SHAPE, make_pairs
from .saved_tensors import saved_for_backward

SHAPE = ModelShape(0, 0, 256, 688, 4, 8, 2, 32, 400, 1024, 0, {})  # the shape measured below, as the plan reads it


def model(tiles: int, checkpointing: bool = False, **shape):
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=400, **{**TINY_SHAPE, **shape}))
    install_scoring_head(llama)
    if tiles:
        assert tile_mlps(llama, tiles) == llama.config.num_hidden_layers
    if checkpointing:
        llama.gradient_checkpointing_enable()
    return llama.train()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_tiles_give_the_whole_mlps_log_probs_loss_and_gradients(checkpointing):
    pairs = make_pairs(7, seed=8)
    results = []
    for tiles in (0, 5):  # 5 tiles of a flattened batch: some cross rows, one may be short
        llama = model(tiles, checkpointing)
        batch = collate_pairs(pairs, 0, BatchLayout("prefix_shared", 48))
        out = forward_pairs(llama, batch)
        reference = (out.chosen_logps.detach() + 1.0, out.rejected_logps.detach() - 0.5)
        loss, *_ = micro_batch_objective(out, *reference, AlgoConfig(rpo_alpha=0.3), step_scale(pairs))
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in llama.parameters()])
        results.append((torch.cat([out.chosen_logps, out.rejected_logps]).detach(), loss.item(), grads))
    (whole, whole_loss, whole_grads), (tiled, tiled_loss, tiled_grads) = results
    assert torch.allclose(tiled, whole, atol=1e-6) and tiled_loss == pytest.approx(whole_loss, abs=1e-7)
    assert torch.allclose(tiled_grads, whole_grads, atol=1e-6)


def saved_bytes(tiles: int, layers: int) -> int:
    """What a forward of 256 tokens saves for backward, by storage, weights left out."""
    llama = model(tiles, num_hidden_layers=layers, hidden_size=256, intermediate_size=688, num_attention_heads=8)
    ids = torch.randint(0, 400, (1, 256))
    return saved_for_backward(llama, lambda: llama.model(input_ids=ids, use_cache=False))


def test_a_tiled_mlp_keeps_only_its_input_for_backward():
    """What autograd saves per decoder layer and token, whole against tiled: the SwiGLU's four intermediate-size
    tensors (gate, up, activation, product: 4 x 4 bytes x 688 in float32) are gone, as the plan counts."""
    per_layer_token = lambda tiles: (saved_bytes(tiles, 4) - saved_bytes(tiles, 2)) / 2 / 256  # noqa: E731
    measured = per_layer_token(0) - per_layer_token(8)
    planned = layer_activation_bytes(SHAPE, 4) - layer_activation_bytes(SHAPE, 4, tiled_mlp=True)
    assert measured == pytest.approx(planned, rel=0.05) and planned == 4 * 4 * 688
