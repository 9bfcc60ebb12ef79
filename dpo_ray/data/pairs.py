"""Scored samples -> preference pairs: the best responses of each prompt against its worst."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .formats import is_empty


def build_pairs(
    prompts: Sequence,
    responses: Sequence[Sequence],
    rewards: Sequence[Sequence[float]],
    min_margin: float = 0.0,
    max_pairs_per_prompt: int = 1,
) -> list[dict]:
    """Per prompt, the k-th best response against the k-th worst, for k < max_pairs_per_prompt.

    A pair is kept only when its reward gap exceeds min_margin (so ties are always dropped) and its two texts differ.
    Empty responses (a policy that stopped at once) are never paired: a preference row cannot hold one.
    prompts[i] and responses[i][j] may be strings or message lists; each pair records both rewards.
    """
    if max_pairs_per_prompt < 1:
        raise ValueError(f"max_pairs_per_prompt must be >= 1, got {max_pairs_per_prompt}")
    pairs = []
    for prompt, outs, scores in zip(prompts, responses, rewards, strict=True):
        if len(outs) != len(scores):
            raise ValueError(f"{len(outs)} responses but {len(scores)} rewards for prompt {prompt!r}")
        if any(not math.isfinite(s) for s in scores):
            raise ValueError(f"non-finite reward for prompt {prompt!r}: {list(scores)}")
        kept = [j for j, out in enumerate(outs) if not is_empty(out)]
        outs, scores = [outs[j] for j in kept], [scores[j] for j in kept]
        # Stable sorts: among tied samples the earlier one is picked first, on both ends.
        descending = sorted(range(len(outs)), key=lambda j: -scores[j])
        ascending = sorted(range(len(outs)), key=lambda j: scores[j])
        for k in range(min(max_pairs_per_prompt, len(outs) // 2)):
            best, worst = descending[k], ascending[k]
            if scores[best] - scores[worst] <= min_margin or outs[best] == outs[worst]:
                break  # later ranks are closer still
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen": outs[best],
                    "rejected": outs[worst],
                    "chosen_reward": float(scores[best]),
                    "rejected_reward": float(scores[worst]),
                }
            )
    return pairs
