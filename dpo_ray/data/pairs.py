"""Scored samples -> preference pairs: best vs worst response of each prompt."""
from __future__ import annotations

from typing import List, Sequence


def build_pairs(prompts: Sequence, responses: Sequence[Sequence], rewards: Sequence[Sequence[float]], min_margin: float = 0.0) -> List[dict]:
    """One pair per prompt whose best and worst rewards differ by more than min_margin; ties are dropped.

    prompts[i] and responses[i][j] may be strings or message lists; each pair records both rewards.
    """
    pairs = []
    for prompt, outs, scores in zip(prompts, responses, rewards, strict=True):
        if len(outs) != len(scores):
            raise ValueError(f"{len(outs)} responses but {len(scores)} rewards for prompt {prompt!r}")
        if len(outs) < 2:
            continue
        best = max(range(len(outs)), key=lambda j: scores[j])
        worst = min(range(len(outs)), key=lambda j: scores[j])
        if scores[best] - scores[worst] <= min_margin or outs[best] == outs[worst]:
            continue
        pairs.append({"prompt": prompt, "chosen": outs[best], "rejected": outs[worst],
                      "chosen_reward": float(scores[best]), "rejected_reward": float(scores[worst])})
    return pairs
