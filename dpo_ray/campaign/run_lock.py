"""One run per output_dir: an OS file lock held for the run's life (released on any exit, SIGKILL included, since the
kernel drops it with the process), naming its holder for whoever finds it taken."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .failures import RunDirInUse

LOCK = ".dpo-ray.lock"
_held: dict[Path, int] = {}  # lock files this process holds -> how deep (a campaign inside the CLI's hold)


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold run_dir for this process (re-entrant), or raise RunDirInUse naming the run that holds it."""
    run_dir = Path(run_dir).expanduser()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir.resolve() / LOCK
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunDirInUse(
            f"output_dir={run_dir}: another run is using it ({holder}); wait for it to end, or give another output_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
    _held[path] = 1
    try:
        yield
    finally:
        del _held[path]
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']}, since {since}"
    except (ValueError, KeyError, OSError):
        return "its holder did not say who it is"
