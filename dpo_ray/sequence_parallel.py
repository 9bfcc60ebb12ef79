"""Ulysses sequence parallelism (DeepSpeed-Ulysses, arXiv 2309.14509) for scoring pairs: the ranks of a sequence-
parallel group each hold one contiguous shard of every row's positions, so a rank keeps 1/size of the activations a
backward needs. Only attention needs the whole sequence: there each rank trades its positions of every head for every
position of a share of the heads (one all-to-all each for queries, keys and values, one back for the output), with the
whole batch's mask or varlen boundaries. Embeddings, MLPs, norms and the scoring head run on the shard, and a pair's
log-prob is the sum of its tokens' over the group.

Written here rather than taken from DeepSpeed's UlyssesSPAttentionHF, which drops the attention mask and takes the
causal structure from position ids alone: the prefix-shared layout's mask (rejected tokens never see the chosen ones)
cannot be said that way, and dpo-ray scores a batch's responses through its own head, not a language-model loss."""

from __future__ import annotations

import torch
import torch.distributed as dist

GROUP = "sequence_parallel_group"  # the model input carrying the group down to the attention function


class _AllToAll(torch.autograd.Function):
    """Chunk j of dim 0 to rank j, chunk i of the result from rank i; its own inverse, so also its backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return _all_to_all(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _all_to_all(grad, ctx.group), None


def _all_to_all(x: torch.Tensor, group) -> torch.Tensor:
    x = x.contiguous()  # the collective reads and writes memory in order: no strides
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


class _Total(torch.autograd.Function):
    """The sum over the group of each rank's partial sums. Every rank goes on to compute the same loss from the total,
    and each backpropagates it through its own part only: the gradient passes through unchanged (an all-reduce of it
    would count the loss once per rank)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        total = x.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def rank_group(rank: int, world: int, size: int):
    """This rank's sequence-parallel group, of consecutive ranks (None for size 1). Every rank creates every group, in
    the same order, as torch.distributed.new_group requires."""
    if size == 1:
        return None
    groups = [dist.new_group(list(range(lo, lo + size))) for lo in range(0, world, size)]
    return groups[rank // size]


def total(x: torch.Tensor, group) -> torch.Tensor:
    return _Total.apply(x, group)


def heads_to_ranks(states: torch.Tensor, group) -> torch.Tensor:
    """(rows, heads, shard, dim) on each rank -> (rows, heads / size, shard * size, dim): every position of this
    rank's share of the heads, the shards in rank order."""
    size = dist.get_world_size(group)
    rows, heads, shard, dim = states.shape
    send = states.reshape(rows, size, heads // size, shard, dim).transpose(0, 1)
    got = _AllToAll.apply(send, group)  # (source rank, rows, heads / size, shard, dim)
    return got.permute(1, 2, 0, 3, 4).reshape(rows, heads // size, size * shard, dim)


def sequence_to_ranks(out: torch.Tensor, group) -> torch.Tensor:
    """The attention output, (rows, sequence, heads / size, dim) -> (rows, sequence / size, heads, dim): this rank's
    positions of every head, the heads in rank order (as heads_to_ranks dealt them)."""
    size = dist.get_world_size(group)
    rows, length, heads, dim = out.shape
    send = out.reshape(rows, size, length // size, heads, dim).transpose(0, 1)
    got = _AllToAll.apply(send, group)  # (source rank = its share of the heads, rows, shard, heads / size, dim)
    return got.permute(1, 2, 0, 3, 4).reshape(rows, length // size, size * heads, dim)


def shard_inputs(inputs: dict, group) -> dict:
    """This rank's columns of the token inputs (ids, position ids); masks and varlen boundaries stay whole: attention
    reads them with the whole sequence."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    width = inputs["input_ids"].shape[1] // size
    columns = slice(rank * width, (rank + 1) * width)
    sharded = {k: v[:, columns] if k in ("input_ids", "position_ids") else v for k, v in inputs.items()}
    return {**sharded, GROUP: group}


def owned(flat_index: torch.Tensor, width: int, group) -> tuple[torch.Tensor, torch.Tensor]:
    """Of positions given by their index into the whole (rows, width) batch flattened: which this rank holds, and
    their index into its (rows, width / size) shard flattened."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    shard = width // size
    row, column = flat_index // width, flat_index % width
    mine = column // shard == rank
    return mine, row[mine] * shard + column[mine] - rank * shard
