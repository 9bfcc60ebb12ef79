"""Online KTO's labelled examples from scored samples: by a reward threshold, or each pair unpaired, each beside a
mismatched completion of another prompt."""

from __future__ import annotations

import math

import pytest

from dpo_ray.data.examples import build_examples, mismatched_completions
from dpo_ray.data.pairs import build_pairs

PROMPTS = ["a", "b", "c"]
RESPONSES = [["x", "y", ""], ["p", "q", "r"], ["s", "t", "u"]]
REWARDS = [[0.2, 0.9, 1.0], [1.0, 1.0, 1.0], [0.0, 0.5, 0.7]]
PROMPT_IDS = [[1], [2], [3]]
RESPONSE_IDS = [[[10], [11], []], [[20], [21], [22]], [[30], [31], [32]]]


def examples(threshold, **options):
    return build_examples(PROMPTS, RESPONSES, REWARDS, (PROMPT_IDS, RESPONSE_IDS), threshold, **options)


def test_a_threshold_labels_every_non_empty_sample_desirable_ones_first():
    rows = examples(0.5)
    assert [(r["completion"], r["label"], r["reward"]) for r in rows] == [
        ("y", True, 0.9),
        ("p", True, 1.0),
        ("q", True, 1.0),
        ("r", True, 1.0),
        ("t", True, 0.5),  # >= threshold is desirable
        ("u", True, 0.7),
        ("x", False, 0.2),
        ("s", False, 0.0),
    ]
    for r in rows:
        i = PROMPTS.index(r["prompt"])
        assert r["completion_ids"] == RESPONSE_IDS[i][RESPONSES[i].index(r["completion"])]  # the sampled tokens
    assert [r["prompt_ids"] for r in rows] == [[1], [2], [2], [2], [3], [3], [1], [3]]


def test_without_a_threshold_each_pair_gives_a_desirable_chosen_and_an_undesirable_rejected_example():
    pairs = build_pairs(PROMPTS, RESPONSES, REWARDS, 0.0, 1, (PROMPT_IDS, RESPONSE_IDS))
    rows = examples(None)
    assert [(r["prompt"], r["completion"], r["label"]) for r in rows] == [
        *((p["prompt"], p["chosen"], True) for p in pairs),
        *((p["prompt"], p["rejected"], False) for p in pairs),
    ]
    assert [(r["completion"], r["reward"]) for r in rows] == [("y", 0.9), ("u", 0.7), ("x", 0.2), ("s", 0.0)]
    assert examples(None, min_margin=0.8) == []  # the pairs' own options apply (both gaps are 0.7)


def test_each_mismatched_completion_is_the_nearest_earlier_one_of_another_prompt():
    rows = examples(0.5)
    ids = [(r["prompt_ids"][0], r["mismatched_ids"]) for r in rows]
    # p, q, r (prompt 2) all take y (prompt 1); the first takes the last (s, prompt 3), cyclically
    assert ids == [(1, [30]), (2, [11]), (2, [11]), (2, [11]), (3, [22]), (3, [22]), (1, [32]), (3, [10])]
    for r in rows:
        assert r["mismatched_ids"] not in RESPONSE_IDS[r["prompt_ids"][0] - 1]
    one_prompt = [{"prompt_ids": [1], "completion_ids": [k]} for k in range(3)]
    assert [r["mismatched_ids"] for r in mismatched_completions(one_prompt)] == [[2], [0], [1]]


def test_a_non_finite_reward_is_refused():
    with pytest.raises(ValueError, match="non-finite reward"):
        build_examples(["a"], [["x", "y"]], [[0.0, math.nan]], ([[1]], [[[1], [2]]]), 0.5)
