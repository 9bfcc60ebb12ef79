"""SIGTERM and SIGINT stop a real `dpo-ray train` process cleanly: exit 143 / 130 with one line on how to resume, no
Ray process of the run left behind (checked by pid), and the same command resumes from the last checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def ray_pids(ray_dir: Path) -> list[int]:
    """Processes whose command line names this run's Ray temp dir (raylet, gcs, workers, agents)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if str(ray_dir) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                found.append(int(pid))
        except OSError:
            continue
    return found


def start(run_dir: Path, data: Path, model: str, ray_dir: Path, steps: int) -> subprocess.Popen:
    overrides = [
        f"output_dir={run_dir}", f"model.path={model}", f"data.train_files=[{data}]", "progress=false",
        f"train.max_steps={steps}", "train.checkpoint_every=3", "train.batch_size=4", "train.micro_batch_size=2",
        "train.lr_scheduler=constant", "train.warmup_steps=0", "train.lr=1e-4", "cluster.policy_ranks=1",
        f"cache_dir={run_dir.parent / 'cache'}", "report_to=none",
    ]  # fmt: skip
    env = {**os.environ, "RAY_TMPDIR": str(ray_dir)}
    return subprocess.Popen(
        [sys.executable, "-m", "dpo_ray.cli", "train", *overrides], env=env, stderr=subprocess.PIPE, text=True
    )


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()[-3000:]
        metrics = run_dir / "metrics.jsonl"
        rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        if any(r.get("step", 0) >= step and "loss" in r for r in rows):
            return
        time.sleep(0.2)
    raise AssertionError(f"no step {step} within {timeout_s}s")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_run_cleanly_and_the_same_command_resumes(tiny_model_dir, tmp_path, signum, code):
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(400)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir, ray_dir = tmp_path / "run", Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # sockets: short paths
    run = start(run_dir, data, tiny_model_dir, ray_dir, steps=90)
    wait_for_step(run_dir, 4, run)
    os.kill(run.pid, signum)
    began = time.monotonic()
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == code, stderr[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in stderr and "resumes from the last checkpoint" in stderr
    assert "Traceback" not in stderr
    deadline = time.monotonic() + 30
    while ray_pids(ray_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_pids(ray_dir), "Ray processes of the run outlived it"
    print(f"stopped in {time.monotonic() - began:.1f}s after {signal.Signals(signum).name}")
    resumed = start(run_dir, data, tiny_model_dir, ray_dir, steps=8)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    attempts = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
    assert attempts[-1]["resumed_from"] in ("step_3", "step_6") and attempts[-1]["cause"] == "rerun"
    shutil.rmtree(ray_dir, ignore_errors=True)
