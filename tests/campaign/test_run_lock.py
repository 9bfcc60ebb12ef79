"""One run per output_dir: a second run stops at once naming the first; a killed holder frees the directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from dpo_ray.campaign.run_lock import RunDirInUse, run_dir_lock

HOLD = (
    "import sys, time; from dpo_ray.campaign.run_lock import run_dir_lock\n"
    "with run_dir_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n"
)


def test_a_second_run_on_a_held_directory_stops_at_once_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.run(
            [sys.executable, "-m", "dpo_ray.cli", "train", f"output_dir={run_dir}", "progress=false"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2
        assert f"another run is using it (pid {holder.pid} on " in second.stderr
        assert "Traceback" not in second.stderr and not (run_dir / "config.json").exists()
        with pytest.raises(RunDirInUse, match=f"pid {holder.pid}"):
            with run_dir_lock(run_dir):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with run_dir_lock(run_dir), run_dir_lock(run_dir):  # free once its holder is gone; re-entrant in one process
        pass
