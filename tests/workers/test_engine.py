"""The learning-rate schedule."""

from __future__ import annotations

import pytest

from dpo_ray.workers.engine import lr_factor


def test_warmup_in_steps_makes_the_schedule_independent_of_the_horizon():
    assert [lr_factor(s, 10, 0.2, "cosine") for s in (0, 1, 2)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    short = [lr_factor(s, 20, 0.5, "constant", warmup_steps=2) for s in range(5)]
    long = [lr_factor(s, 200, 0.5, "constant", warmup_steps=2) for s in range(5)]
    assert short == long == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 1.0])
    assert lr_factor(10, 10, 0.0, "linear") == 0.0
    with pytest.raises(ValueError, match="lr_scheduler"):
        lr_factor(5, 10, 0.0, "step")
