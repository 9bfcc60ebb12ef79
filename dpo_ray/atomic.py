"""Writes that never leave a half-written file or directory behind: temp file (or directory), fsync, rename. Below
every layer: the campaign, the workers, the tasks and the report all write through it."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_bytes(path: str | Path, data: bytes) -> None:
    write_file(path, lambda f: f.write(data))


def write_file(path: str | Path, fill: Callable[[BinaryIO], object]) -> None:
    """fill(f) writes the file's contents to an open binary file (no copy of them held in memory first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide reports and configs from other users of a shared run dir
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_dir(path: str | Path, fill: Callable[[Path], None]) -> None:
    """fill(temp_dir) writes a directory's contents; then it replaces path in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide models and rounds from other users of a shared cache or run dir
        fill(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_once(path: str | Path, fill: Callable[[Path], None], intact: Callable[[], bool]) -> None:
    """write_dir(path, fill) unless intact(), holding a lock on the folder of path: runs that share a cache and start
    together build each entry once (one at a time), and none replaces a directory another is already reading."""
    path = Path(path)
    if intact():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)  # the lock is on the folder that holds path: no lock file left behind
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # released when closed, also if this process dies
        if not intact():  # built by the run that held the lock before this one
            write_dir(path, fill)
    finally:
        os.close(folder)
