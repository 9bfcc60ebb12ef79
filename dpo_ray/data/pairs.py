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
    token_ids: tuple[Sequence[Sequence[int]], Sequence[Sequence[Sequence[int]]]] | None = None,
    beats: Sequence[set[tuple[int, int]]] | None = None,
) -> list[dict]:
    """Per prompt, the k-th best response against the k-th worst, for k < max_pairs_per_prompt.

    A pair is kept only when its reward gap exceeds min_margin (so ties are always dropped) and its two texts differ.
    Empty responses (a policy that stopped at once) are never paired: a preference row cannot hold one.
    prompts[i] and responses[i][j] may be strings or message lists; each pair records both rewards. token_ids, when
    given, is (prompt_ids[i], response_ids[i][j]): the tokens the texts were sampled as, recorded in each pair
    (prompt_ids, chosen_ids, rejected_ids) so training sees exactly them. beats, when given (a pairwise judge's
    scores), holds per prompt the (winner, loser) sample indices both orders of the judge agreed on: a pair is kept
    only when its chosen beat its rejected so.
    """
    if max_pairs_per_prompt < 1:
        raise ValueError(f"max_pairs_per_prompt must be >= 1, got {max_pairs_per_prompt}")
    pairs = []
    prompt_ids, response_ids = token_ids if token_ids else ([None] * len(prompts), [None] * len(prompts))
    judged = beats if beats is not None else [None] * len(prompts)
    for prompt, outs, scores, ids, out_ids, won in zip(
        prompts, responses, rewards, prompt_ids, response_ids, judged, strict=True
    ):
        if len(outs) != len(scores):
            raise ValueError(f"{len(outs)} responses but {len(scores)} rewards for prompt {prompt!r}")
        if any(not math.isfinite(s) for s in scores):
            raise ValueError(f"non-finite reward for prompt {prompt!r}: {list(scores)}")
        kept = [j for j, out in enumerate(outs) if not is_empty(out)]
        outs, scores = [outs[j] for j in kept], [scores[j] for j in kept]
        out_ids = [out_ids[j] for j in kept] if out_ids is not None else None
        # Stable sorts: among tied samples the earlier one is picked first, on both ends.
        descending = sorted(range(len(outs)), key=lambda j: -scores[j])
        ascending = sorted(range(len(outs)), key=lambda j: scores[j])
        for k in range(min(max_pairs_per_prompt, len(outs) // 2)):
            best, worst = descending[k], ascending[k]
            if scores[best] - scores[worst] <= min_margin or outs[best] == outs[worst]:
                break  # later ranks are closer still
            if won is not None and (kept[best], kept[worst]) not in won:
                break  # the judge's orders did not agree on these two: dropped, never guessed
            pair = {
                "prompt": prompt,
                "chosen": outs[best],
                "rejected": outs[worst],
                "chosen_reward": float(scores[best]),
                "rejected_reward": float(scores[worst]),
            }
            if out_ids is not None:
                pair.update(prompt_ids=list(ids), chosen_ids=list(out_ids[best]), rejected_ids=list(out_ids[worst]))
            pairs.append(pair)
    return pairs
