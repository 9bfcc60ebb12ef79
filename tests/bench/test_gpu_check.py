"""The GPU check kit's CPU mode runs every step of the kit, so the kit cannot rot before a GPU shows up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_the_cpu_mode_of_the_gpu_check_kit_runs_every_check_and_they_hold(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    layouts = {k: v for k, v in report["numerics"].items() if isinstance(v, dict)}
    assert set(layouts) == {"sdpa/padded", "sdpa/packed", "sdpa/prefix_shared"}
    for key, row in layouts.items():
        assert row["step0_log_ratio_max_abs"] == 0.0, key  # policy and reference score the same micro-batch
        assert row["max_abs_vs_fp32"] < 0.05, (key, row)  # bf16 model, fp32 log-softmax: rounding only
        assert row["max_abs_vs_padded_bf16"] < 0.05, (key, row)
        assert row["fwd_bwd_s"] > 0
    step = report["zero3"]["zero3"]
    assert step["loss"] == pytest.approx(step["plain_loss"], abs=1e-6)
    assert step["max_param_gap"] <= 1e-6
    # the plan's estimate and the measured peak are reported (a tiny model: the fixed cost dominates the peak)
    assert 0 < step["plan_estimate_gb"] < step["measured_peak_gb"]
    assert report["zero3"]["zero3_offload_cpu"].startswith("skipped")
    rows = report["throughput"]
    assert [(r["pairs_per_step"], r["gradient_checkpointing"]) for r in rows] == [
        (8, False),
        (32, False),
        (8, True),
        (32, True),
    ]
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] for r in rows)
    head = report["head"]  # on CPU both paths multiply in fp32: the same numbers up to summation order
    assert head["max_abs_logp_gap"] < 1e-4 and head["bf16_operands_fwd_bwd_s"] > 0
    steps = report["precision"]  # bf16 AdamW against float64: bf16's noise, 9% of the step (a wrong step: 58%+)
    assert steps["stage 1"]["optimizer"] == "BF16_Optimizer" and steps["stage 3, CPU Adam"].startswith("skipped")
    assert all(steps[f"stage {k}"]["step_gap_of_norm"] < 0.2 for k in (1, 2, 3)), steps
    assert 0 < steps["plan vs peak"]["plan_estimate_gb"] and steps["plan vs peak"]["measured_peak_gb"] > 0
    assert report["stream"]["received_bit_exact"] is True and report["stream"]["bytes_sent"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| sdpa/prefix_shared |" in table and "| zero3 |" in table and "| 256 x 512 x 64 |" in table
