"""A local Ray whose start outran Ray's own deadline is started again, on a real Ray."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from dpo_ray.campaign import local_ray
from tests.conftest import short_ray_tmpdir

pytestmark = pytest.mark.slow


def raylets_of(pid: int) -> list[int]:
    """The raylets of the Ray sessions driver pid started (Ray names a session's directory after its driver)."""
    sessions = (Path(os.environ["RAY_TMPDIR"]) / "ray").glob(f"session_*_{pid}")
    using = [p for session in sessions for p in local_ray.processes_using(session.resolve())]
    return [p for p in using if command_name(p) == "raylet"]


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""  # gone meanwhile


def running(pid: int) -> bool:
    """pid is a process that is not a zombie (a killed child stays one until its parent reaps it)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_start_that_outruns_rays_deadline_is_stopped_and_tried_again(caplog):
    """The first start's raylet is frozen (SIGSTOP) as a raylet on an overloaded machine is slow: it never registers,
    ray.init gives up after Ray's fixed 30 s. The frozen start's processes are stopped and the second start serves."""
    import ray

    frozen: list[int] = []

    def freeze_the_first_raylet():
        deadline = time.monotonic() + 60
        while not frozen and time.monotonic() < deadline:
            for pid in raylets_of(os.getpid()):
                os.kill(pid, signal.SIGSTOP)
                frozen.append(pid)
            time.sleep(0.02)

    with short_ray_tmpdir(), caplog.at_level(logging.WARNING, logger=local_ray.__name__):
        threading.Thread(target=freeze_the_first_raylet, daemon=True).start()
        try:
            local_ray.start(lambda: ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False))
            assert ray.get(ray.remote(lambda: 6 * 7).remote()) == 42
            assert frozen and not any(running(pid) for pid in frozen)
            assert "the local start timed out" in caplog.text and "starting again (2 of 3)" in caplog.text
        finally:
            ray.shutdown()


def test_any_other_failure_of_a_start_is_raised_at_once():
    calls = []

    def init():
        calls.append(1)
        raise RuntimeError("Ray could not bind its port")

    with pytest.raises(RuntimeError, match="bind its port"):
        local_ray.start(init)
    assert len(calls) == 1
