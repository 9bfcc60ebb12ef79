"""Pair building from scored samples, and prompt files for online rounds."""

from __future__ import annotations

import json
import math

import pytest

from dpo_ray.data.errors import DataError
from dpo_ray.data.pairs import build_pairs
from dpo_ray.data.prompts import load_prompts, prompt_text


def test_best_against_worst_with_rewards_recorded_and_ties_dropped():
    pairs = build_pairs(
        ["a", "b", "c"], [["x", "y", "z"], ["p", "q"], ["s", "t"]], [[0.2, 0.9, -1.0], [1.0, 1.0], [0.0, 0.5]]
    )
    assert pairs == [
        {"prompt": "a", "chosen": "y", "rejected": "z", "chosen_reward": 0.9, "rejected_reward": -1.0},
        {"prompt": "c", "chosen": "t", "rejected": "s", "chosen_reward": 0.5, "rejected_reward": 0.0},
    ]


def test_margin_threshold_identical_texts_and_earliest_of_tied_samples():
    assert build_pairs(["a"], [["x", "y"]], [[0.0, 0.3]], min_margin=0.3) == []
    assert len(build_pairs(["a"], [["x", "y"]], [[0.0, 0.31]], min_margin=0.3)) == 1
    assert build_pairs(["a"], [["same", "same"]], [[0.0, 1.0]]) == []
    (pair,) = build_pairs(["a"], [["w1", "r1", "r2", "w2"]], [[0.0, 1.0, 1.0, 0.0]])
    assert (pair["chosen"], pair["rejected"]) == ("r1", "w1")


def test_several_pairs_per_prompt_pair_kth_best_with_kth_worst_until_they_tie():
    outs = ["a", "b", "c", "d", "e", "f"]
    scores = [0.5, 0.9, 0.1, 0.7, 0.0, 0.5]
    pairs = build_pairs(["p"], [outs], [scores], max_pairs_per_prompt=3)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("b", "e"), ("d", "c")]  # 3rd: 0.5 vs 0.5 is a tie
    assert len(build_pairs(["p"], [outs], [scores], max_pairs_per_prompt=1)) == 1


def test_empty_responses_are_never_paired():
    pairs = build_pairs(["p", "q"], [["good", "", "bad"], ["  ", "only"]], [[1.0, -5.0, 0.0], [0.0, 1.0]])
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("good", "bad")]  # q has one non-empty response left
    chat = [[{"role": "assistant", "content": ""}], [{"role": "assistant", "content": "yes"}]]
    assert build_pairs([[{"role": "user", "content": "p"}]], [chat], [[0.0, 1.0]]) == []


def test_bad_scores_are_errors():
    with pytest.raises(ValueError, match="2 responses but 1 rewards"):
        build_pairs(["p"], [["a", "b"]], [[1.0]])
    with pytest.raises(ValueError, match="non-finite reward"):
        build_pairs(["p"], [["a", "b"]], [[1.0, math.nan]])


def test_prompt_files_accept_strings_and_messages_and_name_bad_rows(tmp_path):
    good = tmp_path / "prompts.jsonl"
    good.write_text(
        json.dumps({"prompt": "Write 3 in words."})
        + "\n"
        + json.dumps({"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]})
        + "\n"
    )
    prompts = load_prompts([str(good)])
    assert prompts[0] == "Write 3 in words." and prompt_text(prompts[1]) == "Hi"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "ok"})
        + "\n"
        + json.dumps({"question": "no prompt"})
        + "\n"
        + json.dumps({"prompt": "  "})
        + "\n"
    )
    with pytest.raises(DataError, match=r"bad.jsonl: row 1: field 'prompt': missing"):
        load_prompts([str(bad)])
    assert load_prompts([str(bad)], on_error="skip") == ["ok"]


def test_pairs_record_the_token_ids_their_texts_were_sampled_as():
    (pair,) = build_pairs(
        ["p"],
        [["good", "", "bad"]],
        [[1.0, 5.0, 0.0]],
        token_ids=([[1, 2]], [[[10, 11, 0], [0], [12, 0]]]),
    )
    assert (pair["chosen"], pair["rejected"]) == ("good", "bad")  # the empty sample is never paired
    assert (pair["prompt_ids"], pair["chosen_ids"], pair["rejected_ids"]) == ([1, 2], [10, 11, 0], [12, 0])


def test_a_judges_pairs_need_the_chosen_to_have_beaten_the_rejected_in_both_orders():
    outs, wins = ["w", "r", "x", "v"], [0.0, 2.0, 0.0, 1.0]
    (pair,) = build_pairs(["p"], [outs], [wins], beats=[{(1, 0), (1, 2), (3, 0)}])
    assert (pair["chosen"], pair["rejected"], pair["chosen_reward"]) == ("r", "w", 2.0)
    assert build_pairs(["p"], [outs], [wins], beats=[{(1, 2), (3, 0)}]) == []  # most wins, but never beat "w" so
    assert build_pairs(["p"], [outs], [wins], beats=[set()]) == []
