"""Checkpoints that a crash cannot corrupt and that are checked before anything loads: DeepSpeed shards and the run
state go into a hidden partial directory with, written last, a manifest of every file's size and SHA-256; it is
renamed into place once complete; the `latest` pointer is written last; only the newest K are kept. The policy ranks
hash the shards they wrote, each on its own node, and hash a share each when a checkpoint is checked before it loads:
at 70B a checkpoint is ~12 bytes a parameter, far too much for the driver alone to read. A checkpoint whose files do
not match its manifest (cut, altered, planted: DeepSpeed unpickles what it loads) is skipped, with its path and reason
logged, for the newest one that matches."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from ..atomic import write_text
from ..file_digests import digests
from ..groups.policy_group import PolicyGroup
from ..run_storage import checkpointed
from ..schema import RunConfig, ZeroStage
from .failures import CheckpointError, DiskFull

log = logging.getLogger(__name__)
STATE = "run_state.json"
MANIFEST = "manifest.json"  # {relative path: [size, sha256]} of every other file of the checkpoint
PARTIAL = ".partial-"
POINTER = "latest"
Hasher = Callable[[Path, Sequence[str]], dict[str, list]]  # {name: [size, sha256]} of the files named in a directory


class CheckpointStore:
    def __init__(self, root: Path, keep: int = 3):
        self.root, self.keep = Path(root), keep
        self.verified: set[str] = set()  # checkpoints this store wrote or checked (hashed once a process)

    def save(self, policy: PolicyGroup, tag: str, state: dict, also: Callable[[Path], None] | None = None) -> Path:
        """All policy ranks write their shards under a partial name (also writes what else belongs there: TR-DPO's
        reference); then the state, the rename, and the pointer."""
        self.root.mkdir(parents=True, exist_ok=True)
        partial, final = self.root / f"{PARTIAL}{tag}", self.root / tag
        shutil.rmtree(partial, ignore_errors=True)
        try:
            hashed = policy.save_checkpoint(str(self.root), partial.name)  # the ranks hash their own shards
            if also is not None:
                also(partial)
            written_by = {"ranks": policy.size, "zero_stage": policy.zero_stage}  # another shape loads it resharded
            write_text(partial / STATE, json.dumps({"tag": tag, "policy": written_by, **state}))
            write_text(partial / MANIFEST, json.dumps(manifest(partial, hashed)))
        except Exception as error:
            written = _bytes(partial)
            shutil.rmtree(partial, ignore_errors=True)  # a half-written checkpoint only keeps the disk full
            full = out_of_space(self.root, max(written, self._last_size()))
            if full:
                raise DiskFull(f"{full}; the checkpoint {tag} was not written (the last good one stays)") from error
            raise
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        self.verified.add(tag)
        _fsync_dir(self.root)
        write_text(self.root / POINTER, tag)
        self._prune()
        checkpointed(self.root.parent)  # to the run's bucket, when it is kept in object storage
        return final

    def _last_size(self) -> int:
        """Bytes of the newest complete checkpoint (what the next one will need, about)."""
        complete = self.complete()
        return _bytes(self.root / complete[-1]) if complete else 0

    def complete(self) -> list[str]:
        """Tags of complete checkpoints, oldest first (by the step or round number in the tag)."""
        if not self.root.is_dir():
            return []
        tags = [
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / STATE).exists()
        ]
        return sorted(tags, key=_order)

    def latest(self, hasher: Hasher | None = digests) -> dict | None:
        """The newest complete checkpoint that matches its manifest: its state (with its tag), or None when there is
        no checkpoint. Partial ones are never picked; one that fails its manifest is logged and skipped; when every
        one fails, a CheckpointError says why rather than silently starting over. hasher hashes the files (the policy
        ranks' PolicyGroup.hash_files once they run); None checks their names and sizes only (before Ray starts)."""
        pointer = self.root / POINTER
        tag = pointer.read_text().strip() if pointer.exists() else ""
        complete = self.complete()
        if tag and tag not in complete:
            log.warning("%s names %r, which is not a complete checkpoint; using the newest complete one", pointer, tag)
        candidates = ([tag] if tag in complete else []) + [t for t in reversed(complete) if t != tag]
        reasons = []
        for candidate in candidates:
            problem = None if candidate in self.verified else verify(self.root / candidate, hasher)
            if problem is None:
                if hasher is not None:
                    self.verified.add(candidate)
                return json.loads((self.root / candidate / STATE).read_text())
            log.warning("checkpoint %s: %s; not loading it", self.root / candidate, problem)
            reasons.append(f"{candidate}: {problem}")
        if reasons:
            raise CheckpointError(
                f"no checkpoint in {self.root} matches its manifest ({'; '.join(reasons)}); move them away to start "
                "over, or set resume=never"
            )
        return None

    def load(self, policy: PolicyGroup, state: dict) -> None:
        """The checkpoint into the policy group; one written by another number of ranks at ZeRO stage 1-3 is
        re-partitioned for this one (stage 0's whole state loads on any number)."""
        tag, written_by = state["tag"], state.get("policy") or {}  # older checkpoints: written by this very shape
        ranks, stage = written_by.get("ranks", policy.size), written_by.get("zero_stage", policy.zero_stage)
        if ranks == policy.size or stage == 0:
            policy.load_checkpoint(str(self.root), tag)
            return
        log.info("checkpoint %s: written by %d policy ranks, re-partitioning it for %d", tag, ranks, policy.size)
        policy.load_resharded(str(self.root), tag, str(self.root / f"{PARTIAL}universal-{tag}"))

    def directory(self, state: dict) -> Path:
        return self.root / state["tag"]

    def _prune(self) -> None:
        for stale in self.root.glob(f"{PARTIAL}*"):
            shutil.rmtree(stale, ignore_errors=True)
        for tag in self.complete()[: -self.keep]:
            shutil.rmtree(self.root / tag, ignore_errors=True)


def keep_written_stage(cfg: RunConfig, state: dict | None) -> None:
    """A run resuming from state keeps the ZeRO stage its checkpoint was written at: with auto, another number of
    ranks could pick another stage, and DeepSpeed loads a checkpoint only at the stage that wrote it. A stage given
    that differs is refused before anything starts."""
    written = (state or {}).get("policy")
    if not written:
        return
    stage, given = written["zero_stage"], str(cfg.deepspeed.zero_stage)
    if given == "auto":
        cfg.deepspeed.zero_stage = ZeroStage(str(stage))
        log.info("resuming from %s at the ZeRO stage it was written at: %d", state["tag"], stage)
    elif int(given) != stage:
        raise CheckpointError(
            f"checkpoint {state['tag']} of {cfg.output_dir} was written at ZeRO stage {stage}, and DeepSpeed loads it "
            f"at that stage only: drop deepspeed.zero_stage={given} (auto keeps it), or resume=never to start over"
        )


def _bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) if directory.exists() else 0


def mount_point(path: Path) -> tuple[str, str]:
    """(device, mount point) of the file system path is on, from /proc/mounts (the longest mount prefix)."""
    path, best = Path(path).resolve(), ("?", "/")
    try:
        mounts = [line.split()[:2] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return best
    for device, point in mounts:
        if (path == Path(point) or Path(point) in path.parents) and len(point) >= len(best[1]):
            best = (device, point)
    return best


def out_of_space(path: Path, needed: int) -> str:
    """'no space left on DEVICE ...' when the file system under path has less than needed bytes free, else ''."""
    free = shutil.disk_usage(path).free
    if free >= max(needed, 1 << 20):
        return ""
    device, point = mount_point(path)
    return (
        f"no space left on {device} (mounted at {point}): {free / 1e6:.1f} MB free, a checkpoint needs ~"
        f"{max(needed, 1 << 20) / 1e6:.1f} MB"
    )


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def manifest(directory: Path, hashed: dict[str, list] | None = None) -> dict[str, list]:
    """Size and SHA-256 of every file under directory: those in hashed as the policy ranks hashed them, the rest (the
    run state, DeepSpeed's recovery script, TR-DPO's reference) here."""
    hashed = hashed or {}
    names = [str(f.relative_to(directory)) for f in _files(directory)]
    rest = digests(directory, [n for n in names if n not in hashed])
    return {name: hashed[name] if name in hashed else rest[name] for name in names}


def verify(directory: Path, hasher: Hasher | None = digests) -> str | None:
    """Why directory's files do not match its manifest (missing, extra, another size, another hash), or None; with
    hasher None, the names and sizes only."""
    path = directory / MANIFEST
    if not path.exists():
        return "it has no manifest (written by an older dpo-ray, or cut before its end)"
    try:
        expected = json.loads(path.read_text())
    except (ValueError, OSError) as error:
        return f"its manifest is unreadable ({error})"
    present = {str(f.relative_to(directory)): f for f in _files(directory)}
    extra = sorted(set(present) - set(expected))
    if extra:
        return f"it holds files its manifest does not list: {', '.join(extra[:5])}"
    for name, (size, _) in expected.items():
        if name not in present:
            return f"{name} is missing"
        if present[name].stat().st_size != size:
            return f"{name} has {present[name].stat().st_size} bytes, not {size}"
    if hasher is None:
        return None
    found = hasher(directory, list(expected))
    altered = [name for name, (_, digest) in expected.items() if found[name][1] != digest]
    return f"{altered[0]} does not match its SHA-256" if altered else None


def _order(tag: str):
    numbers = re.findall(r"\d+", tag)
    return (int(numbers[-1]) if numbers else -1, tag)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
