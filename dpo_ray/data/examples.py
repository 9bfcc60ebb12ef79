"""Scored samples -> KTO's labelled examples (TRL's unpaired layout: prompt, completion, label), each beside the
mismatched completion whose reference log-ratio estimates KTO's reference point."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .formats import is_empty
from .pairs import build_pairs


def build_examples(
    prompts: Sequence,
    responses: Sequence[Sequence],
    rewards: Sequence[Sequence[float]],
    token_ids: tuple[Sequence[Sequence[int]], Sequence[Sequence[Sequence[int]]]],
    threshold: float | None,
    min_margin: float = 0.0,
    max_pairs_per_prompt: int = 1,
    beats: Sequence[set[tuple[int, int]]] | None = None,
) -> list[dict]:
    """With a threshold, every non-empty sample, desirable when its reward >= threshold; without one, build_pairs'
    pairs unpaired (chosen desirable, rejected undesirable), as TRL unpairs a paired dataset. Desirable examples come
    first, then see mismatched_completions. token_ids is (prompt_ids[i], response_ids[i][j]), as sampled; beats: a
    judge's agreed (winner, loser) indices per prompt, as build_pairs takes them."""
    prompt_ids, response_ids = token_ids
    examples = []
    if threshold is None:
        pairs = build_pairs(prompts, responses, rewards, min_margin, max_pairs_per_prompt, token_ids, beats)
        for label, side in ((True, "chosen"), (False, "rejected")):
            examples += [
                _example(p["prompt"], p[side], p[f"{side}_reward"], p["prompt_ids"], p[f"{side}_ids"], label)
                for p in pairs
            ]
    else:
        for prompt, outs, scores, ids, out_ids in zip(
            prompts, responses, rewards, prompt_ids, response_ids, strict=True
        ):
            if any(not math.isfinite(s) for s in scores):
                raise ValueError(f"non-finite reward for prompt {prompt!r}: {list(scores)}")
            examples += [
                _example(prompt, out, score, ids, o, score >= threshold)
                for out, score, o in zip(outs, scores, out_ids, strict=True)
                if not is_empty(out)
            ]
        examples.sort(key=lambda e: not e["label"])  # stable: desirable first, each side in sample order
    return mismatched_completions(examples)


def _example(prompt, completion, reward: float, prompt_ids, completion_ids, label: bool) -> dict:
    return {
        "prompt": prompt,
        "completion": completion,
        "label": bool(label),
        "reward": float(reward),
        "prompt_ids": list(prompt_ids),
        "completion_ids": list(completion_ids),
    }


def mismatched_completions(examples: list[dict]) -> list[dict]:
    """Each example's mismatched_ids: the completion of the nearest earlier example (cyclically) whose prompt differs,
    so that the KL estimate pairs a prompt with another prompt's answer even when one prompt has several examples
    side by side; the previous example's when every example shares one prompt."""
    n = len(examples)
    for i, example in enumerate(examples):
        j = next(
            (j % n for j in range(i - 1, i - n, -1) if examples[j % n]["prompt_ids"] != example["prompt_ids"]), i - 1
        )
        example["mismatched_ids"] = list(examples[j % n]["completion_ids"])
    return examples
