"""Checkpoints that a crash cannot corrupt: DeepSpeed shards and the run state go into a hidden partial directory,
which is renamed into place once complete; the `latest` pointer is written last; only the newest K are kept."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from ..atomic import write_text
from ..groups.policy_group import PolicyGroup

log = logging.getLogger(__name__)
STATE = "run_state.json"
PARTIAL = ".partial-"
POINTER = "latest"


class CheckpointStore:
    def __init__(self, root: Path, keep: int = 3):
        self.root, self.keep = Path(root), keep

    def save(self, policy: PolicyGroup, tag: str, state: dict, also: Callable[[Path], None] | None = None) -> Path:
        """All policy ranks write their shards under a partial name (also writes what else belongs there: TR-DPO's
        reference); then the state, the rename, and the pointer."""
        self.root.mkdir(parents=True, exist_ok=True)
        partial, final = self.root / f"{PARTIAL}{tag}", self.root / tag
        shutil.rmtree(partial, ignore_errors=True)
        policy.save_checkpoint(str(self.root), partial.name)
        if also is not None:
            also(partial)
        write_text(partial / STATE, json.dumps({"tag": tag, **state}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        _fsync_dir(self.root)
        write_text(self.root / POINTER, tag)
        self._prune()
        return final

    def complete(self) -> list[str]:
        """Tags of complete checkpoints, oldest first (by the step or round number in the tag)."""
        if not self.root.is_dir():
            return []
        tags = [
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / STATE).exists()
        ]
        return sorted(tags, key=_order)

    def latest(self) -> dict | None:
        """The newest complete checkpoint's state (with its tag), or None; partial ones are never picked."""
        pointer = self.root / POINTER
        tag = pointer.read_text().strip() if pointer.exists() else ""
        complete = self.complete()
        if tag not in complete:
            if tag:
                log.warning(
                    "%s names %r, which is not a complete checkpoint; using the newest complete one", pointer, tag
                )
            tag = complete[-1] if complete else ""
        return json.loads((self.root / tag / STATE).read_text()) if tag else None

    def load(self, policy: PolicyGroup, state: dict) -> None:
        policy.load_checkpoint(str(self.root), state["tag"])

    def directory(self, state: dict) -> Path:
        return self.root / state["tag"]

    def _prune(self) -> None:
        for stale in self.root.glob(f"{PARTIAL}*"):
            shutil.rmtree(stale, ignore_errors=True)
        for tag in self.complete()[: -self.keep]:
            shutil.rmtree(self.root / tag, ignore_errors=True)


def _order(tag: str):
    numbers = re.findall(r"\d+", tag)
    return (int(numbers[-1]) if numbers else -1, tag)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
