"""The ZeRO stage a run can use and the one auto picks, from the bytes of model states each stage leaves a rank."""

from __future__ import annotations

import pytest

from dpo_ray.workers.zero_stage import STAGES, auto_zero_stage, model_state_bytes, stage_problem

GB = 1e9


def test_model_states_per_rank_are_the_zero_papers_figures():
    """The ZeRO paper's Figure 1: 7.5B parameters, mixed-precision Adam (K = 12), 64 ranks: 120, 31.4, 16.6 and 1.9
    GB per rank at stages 0-3 (16-bit gradients)."""
    params = 7.5e9
    got = [model_state_bytes(s, 64, params, params, 2, False, True, False) / GB for s in STAGES]
    assert got == pytest.approx([120, 31.4, 16.6, 1.875], abs=0.05)
    # float32 gradient accumulation (dpo-ray's default) adds 2 bytes a parameter until stage 2 splits them
    fp32_grads = model_state_bytes(0, 64, params, params, 2, True, True, False) / GB
    assert fp32_grads == pytest.approx(135)
    assert model_state_bytes(1, 64, params, params, 2, False, True, True) / GB == pytest.approx(30)  # offloaded


def auto(params, trainable, world, device_gb, dtype="bfloat16", dtype_bytes=2, offload="none"):
    allowed = [s for s in STAGES if not stage_problem(s, dtype, offload, "none")]
    return auto_zero_stage(
        allowed,
        lambda s: model_state_bytes(s, world, params, trainable, dtype_bytes, True, True, offload != "none"),
        device_gb * GB,
    )


def test_auto_picks_the_lowest_stage_whose_model_states_fit_half_the_device():
    assert auto(26e6, 26e6, 2, 12, "float32", 4) == 0  # the issue-17 workload on this machine: plain data parallel
    assert auto(7e9, 7e9, 8, 80) == 2  # stage 1 holds 14 + 28 + 10.5 GB > 40; stage 2 14 + 3.5 + 10.5
    assert auto(70e9, 70e9, 64, 80) == 3
    assert auto(7e9, 0, 8, 80) == 1  # LoRA: the frozen 14 GB fit; bfloat16 never runs at stage 0
    assert auto(70e9, 0, 8, 80) == 3  # LoRA on 70B: 140 GB of frozen weights must be partitioned
    # 7B on 16 ranks of 40 GB: stage 2 holds 14 + 1.75 + 5.25 GB > 20, so stage 3; with the optimizer states on the
    # host, stage 2's 15.75 GB fit
    assert auto(7e9, 7e9, 16, 40) == 3 and auto(7e9, 7e9, 16, 40, offload="cpu") == 2
    assert auto(200e9, 200e9, 8, 80) == 3  # nothing fits: the highest stage, and the run says how much it needs


def test_stages_a_run_cannot_use_are_refused_with_the_reason():
    assert stage_problem(0, "bfloat16", "none", "none").startswith("model.dtype bfloat16")
    assert "only stage 3" in stage_problem(2, "float32", "none", "cpu")
    assert "needs stage 3" in stage_problem(1, "float32", "nvme", "none")
    assert "stage >= 1" in stage_problem(0, "float32", "cpu", "none")
    assert stage_problem(1, "float32", "cpu", "none") is None and stage_problem(0, "float32", "none", "none") is None
