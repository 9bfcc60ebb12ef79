"""The learning-rate schedule."""

from __future__ import annotations

import pytest

from dpo_ray.workers.deepspeed_setup import lr_factor, warmup_length


def test_warmup_in_steps_makes_the_schedule_independent_of_the_horizon():
    assert [lr_factor(s, 10, 0.2, "cosine") for s in (0, 1, 2)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    short = [lr_factor(s, 20, 2, "constant") for s in range(5)]
    long = [lr_factor(s, 200, 2, "constant") for s in range(5)]
    assert short == long == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 1.0])
    assert lr_factor(10, 10, 0.0, "linear") == 0.0
    assert lr_factor(5, 10, 0, "linear") == pytest.approx(0.5)


def test_warmup_below_one_is_a_share_of_all_steps_and_whole_numbers_are_steps():
    assert warmup_length(0.1, 27) == 3 and warmup_length(0.0, 27) == 0
    assert warmup_length(1, 27) == 1 and warmup_length(2.0, 1000) == 2
