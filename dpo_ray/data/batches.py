"""One optimizer step's pairs -> equal-length lists of micro-batches per rank (the ranks' collectives run in step)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .tokenize import TokenizedPair


@dataclass
class MicroBatch:
    pairs: list[TokenizedPair]
    reference_chosen_logps: list[float] | None = None
    reference_rejected_logps: list[float] | None = None
    weight: float = 1.0  # 0 for a filler batch that only keeps a rank's collectives in step


@dataclass(frozen=True)
class StepScale:
    """Global totals that turn per-micro-batch sums into exact global means, however pairs are split."""

    pairs: int
    chosen_tokens: int


def step_scale(pairs: Sequence[TokenizedPair]) -> StepScale:
    return StepScale(pairs=len(pairs), chosen_tokens=sum(p.chosen_len for p in pairs))


def plan_micro_batches(
    indices: Sequence[int], world: int, micro_batch_size: int, per_rank: int | None = None
) -> list[list[list[int]]]:
    """Deal indices round-robin to ranks, cut each rank's share into micro-batches, and pad every rank to the same
    count (per_rank if given) with empty micro-batches."""
    shares = [list(indices[r::world]) for r in range(world)]
    plan = [[share[i : i + micro_batch_size] for i in range(0, len(share), micro_batch_size)] for share in shares]
    count = per_rank if per_rank is not None else max(len(p) for p in plan)
    if any(len(p) > count for p in plan):
        raise ValueError(f"{len(indices)} pairs need more than {count} micro-batches of {micro_batch_size} per rank")
    return [p + [[] for _ in range(count - len(p))] for p in plan]


def step_groups(
    indices: Sequence[int], world: int, micro_batch_size: int, per_rank: int | None = None
) -> list[list[int]]:
    """The micro-batches (pair indices, in collation order) that one step over these indices forms, rank after rank.
    Whoever scores a pair in the same micro-batch computes exactly what the policy does (bf16 included)."""
    return [group for rank in plan_micro_batches(indices, world, micro_batch_size, per_rank) for group in rank if group]


def deal_groups(groups: Sequence[list[int]], world: int) -> list[list[list[int]]]:
    """Micro-batches dealt to ranks in turn, every rank padded with empty ones to the same count (ranks in lockstep)."""
    shares = [list(groups[r::world]) for r in range(world)]
    count = max(len(share) for share in shares)
    return [share + [[] for _ in range(count - len(share))] for share in shares]


def as_micro_batches(
    pairs: Sequence[TokenizedPair],
    index_plan: list[list[list[int]]],
    reference: tuple[list[float], list[float]] | None = None,
) -> list[list[MicroBatch]]:
    """Each rank's micro-batches of an index plan (with reference log-probs when given); empty slots become
    zero-weight fillers (a copy of the first pair) so every rank runs the same collectives."""
    filler = next(i for rank in index_plan for idx in rank for i in idx)

    def make(idx: list[int]) -> MicroBatch:
        weight, idx = (1.0, idx) if idx else (0.0, [filler])
        refs = (None, None) if reference is None else ([reference[0][i] for i in idx], [reference[1][i] for i in idx])
        return MicroBatch([pairs[i] for i in idx], *refs, weight=weight)

    return [[make(idx) for idx in rank] for rank in index_plan]


def scores_by_pair(
    index_plan: list[list[list[int]]], per_rank: list[list[list[tuple[float, float]]]], n: int
) -> tuple[list[float], list[float]]:
    """(chosen, rejected) of n pairs from each rank's per-micro-batch scores of an index plan (none for fillers)."""
    chosen, rejected = [0.0] * n, [0.0] * n
    for rank_plan, rank_scores in zip(index_plan, per_rank, strict=True):
        for indices, scores in zip(rank_plan, rank_scores, strict=True):
            for i, (c, r) in zip(indices, scores, strict=True):
                chosen[i], rejected[i] = c, r
    return chosen, rejected


def build_micro_batches(
    pairs: Sequence[TokenizedPair],
    indices: Sequence[int],
    world: int,
    size: int,
    reference: tuple[list[float], list[float]] | None,
    per_rank: int | None = None,
) -> tuple[list[list[list[int]]], list[list[MicroBatch]]]:
    """The index plan of plan_micro_batches and its micro-batches (see as_micro_batches)."""
    index_plan = plan_micro_batches(indices, world, size, per_rank)
    return index_plan, as_micro_batches(pairs, index_plan, reference)
