"""`dpo-ray submit` against a real Ray head started by the test (loopback, free ports, its own temp dir)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dpo_ray.workers.distributed import free_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` with the dashboard on 127.0.0.1; the job's python is this venv's; stopped by PID."""
    temp = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs_port, dashboard_port = free_port(), free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs_port}",
            "--num-cpus=4",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--temp-dir={temp}",
            "--include-dashboard=true",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.monotonic() + 120
    # A fresh process: the job client must see the head's token before Ray's config is first read.
    probe = [
        sys.executable,
        "-c",
        "import sys; from dpo_ray.submit import use_local_token; use_local_token(); "
        "from ray.job_submission import JobSubmissionClient; JobSubmissionClient(sys.argv[1]).list_jobs()",
        address,
    ]
    while subprocess.run(probe, capture_output=True, env=env).returncode != 0:
        if head.poll() is not None or time.monotonic() > deadline:
            os.killpg(head.pid, signal.SIGKILL)
            pytest.fail(f"the Ray head did not come up: {head.stdout.read().decode()[-3000:]}")
        time.sleep(1)
    yield address
    os.killpg(head.pid, signal.SIGKILL)  # Ray's graceful stop takes ~30 s and is not what this module tests
    head.wait(timeout=60)


def test_ray_job_submit_runs_offline_dpo_on_the_cluster_and_saves_the_model(ray_head, tmp_path, task_cache_dir):
    run_dir = tmp_path / "run"
    began = time.perf_counter()
    done = subprocess.run(
        [
            str(BIN / "dpo-ray"),
            "submit",
            "--address",
            ray_head,
            "--env",
            "DPO_RAY_TEST=1",
            "train",
            f"output_dir={run_dir}",
            f"cache_dir={task_cache_dir}",
            "progress=false",
            "train.max_steps=3",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    assert "submitted job " in output and "SUCCEEDED" in output
    assert (run_dir / "final" / "model.safetensors").exists() and (run_dir / "summary.json").exists()
    print(f"ray job submit: {time.perf_counter() - began:.1f}s end to end")


def test_a_failing_job_returns_a_non_zero_status(ray_head, tmp_path):
    done = subprocess.run(
        [
            str(BIN / "dpo-ray"),
            "submit",
            "--address",
            ray_head,
            "train",
            f"output_dir={tmp_path}",
            "model.path=/nonexistent/model",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1 and "FAILED" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
