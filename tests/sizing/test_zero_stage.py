"""The ZeRO stages a run can use, and the bytes of model states each stage leaves a rank (the stage auto picks:
test_memory_estimate.py)."""

from __future__ import annotations

import pytest

from dpo_ray.sizing.zero_stage import STAGES, model_states, stage_problem

GB = 1e9


def test_model_states_per_rank_are_the_zero_papers_figures():
    """The ZeRO paper's Figure 1: 7.5B parameters, mixed-precision Adam (K = 12), 64 ranks: 120, 31.4, 16.6 and 1.9
    GB per rank at stages 0-3 (16-bit gradients)."""
    params = 7.5e9
    got = [model_states(s, 64, params, params, 2, False, True).device / GB for s in STAGES]
    assert got == pytest.approx([120, 31.4, 16.6, 1.875], abs=0.05)
    # float32 gradient accumulation (dpo-ray's default) adds 2 bytes a parameter until stage 2 splits them
    assert model_states(0, 64, params, params, 2, True, True).device / GB == pytest.approx(135)
    # ZeRO-Offload: the optimizer states and the gradients go to the host; stage 3 can move the weights too
    offloaded = model_states(1, 64, params, params, 2, False, True, offload_optimizer=True)
    assert (offloaded.device / GB, offloaded.host / GB) == pytest.approx((15, 15 + 12 * 7.5 / 64))
    everything = model_states(3, 64, params, params, 2, True, True, offload_optimizer=True, offload_param=True)
    assert (everything.device, everything.host / GB) == (0, pytest.approx(18 * 7.5 / 64))
    # float32 weights: DeepSpeed still keeps a float32 master copy at stages 1-3; stage 0 (plain torch) does not
    assert [model_states(s, 2, 1e9, 1e9, 4, True, True).optimizer / GB for s in STAGES] == [8, 6, 6, 6]


def test_stages_a_run_cannot_use_are_refused_with_the_reason():
    assert stage_problem(0, "bfloat16", "none", "none").startswith("model.dtype bfloat16")
    assert "only stage 3" in stage_problem(2, "float32", "none", "cpu")
    assert "needs stage 3" in stage_problem(1, "float32", "nvme", "none")
    assert "stage >= 1" in stage_problem(0, "float32", "cpu", "none")
    assert stage_problem(1, "float32", "cpu", "none") is None and stage_problem(0, "float32", "none", "none") is None
    assert "modules_to_save" in stage_problem(3, "float32", "none", "none", saves_modules=True)
    assert stage_problem(2, "float32", "none", "none", saves_modules=True) is None
