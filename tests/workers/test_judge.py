"""A judge function's worker, in one process: its answers, and a judge that does not import (its failures on an input:
test_user_code)."""

from __future__ import annotations

import pytest

from dpo_ray.data.tournament import parse_verdict
from dpo_ray.tasks.number_words import prompt
from dpo_ray.workers.judge import JudgeFnWorker


def not_text(prompt_text: str, a: str, b: str):
    return 1


def test_the_stand_in_judge_prefers_the_right_answer_in_either_order_and_fails_like_a_real_judge():
    worker = JudgeFnWorker("dpo_ray.tasks.number_words:judge")
    requests = [
        (prompt(42), "forty-two", "fourty-two"),
        (prompt(42), "fourty-two", "forty-two"),
        (prompt(7), "seven", " seven"),
        (prompt(40), "fourty", "forty "),
        (prompt(90), "ninty", "nine0"),
        (prompt(90), "ninty", "nintyy"),
    ]
    assert [parse_verdict(a) for a in worker.judge(requests)] == ["A", "B", "tie", "B", "A", None]


def test_a_judge_that_does_not_import_is_named():
    with pytest.raises(ValueError, match="reward.judge_fn='nope:f': cannot import"):
        JudgeFnWorker("nope:f")
