"""What a set of tokenised pairs looks like, for the failure-mode monitors: response lengths, how often the longer
response is the chosen one, near-identical pairs, and how often the reference already prefers the rejected response."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from .tokenize import TokenizedPair

SIMILARITY_SAMPLE = 2000  # near-identical share from at most this many evenly spaced pairs (difflib is quadratic)


def similarity(a: Sequence[int], b: Sequence[int]) -> float:
    """difflib's ratio of two token sequences: 1.0 for identical, 0.0 for nothing in common."""
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def pair_statistics(
    pairs: Sequence[TokenizedPair],
    near_identical_ratio: float,
    reference: tuple[Sequence[float], Sequence[float]] | None = None,
) -> dict[str, float]:
    """Means over pairs; reference (chosen, rejected log-probs, aligned with pairs) adds the label-noise estimate."""
    if not pairs:
        return {}
    n = len(pairs)
    spaced = pairs[:: max(1, n // SIMILARITY_SAMPLE)]
    stats = {
        "length/chosen": sum(p.chosen_len for p in pairs) / n,
        "length/rejected": sum(p.rejected_len for p in pairs) / n,
        "pairs/chosen_longer_share": sum(p.chosen_len > p.rejected_len for p in pairs) / n,
        "pairs/near_identical_share": sum(
            similarity(p.chosen_ids, p.rejected_ids) >= near_identical_ratio for p in spaced
        )
        / len(spaced),
    }
    if reference is not None:
        chosen, rejected = reference
        # Per token, so that a longer response is not "less likely" just for being longer.
        stats["pairs/reference_disagrees"] = (
            sum(
                c / max(1, len(p.chosen_ids)) < r / max(1, len(p.rejected_ids))
                for p, c, r in zip(pairs, chosen, rejected, strict=True)
            )
            / n
        )
    return stats


def example_statistics(examples: Sequence[TokenizedPair]) -> dict[str, float]:
    """KTO's labelled examples: the desirable share and each side's mean completion length."""
    if not examples:
        return {}
    desirable = [e.chosen_len for e in examples if e.label]
    undesirable = [e.chosen_len for e in examples if not e.label]
    stats = {"examples/desirable_share": len(desirable) / len(examples)}
    stats.update(
        {f"length/{side}": sum(n) / len(n) for side, n in (("desirable", desirable), ("undesirable", undesirable)) if n}
    )
    return stats
