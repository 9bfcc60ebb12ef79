"""Runs kept in object storage: an output_dir of s3://bucket/path or gs://bucket/path (pyarrow's file systems, as
Ray Train's storage_path; credentials and endpoints as the provider's SDK takes them, e.g. AWS_ACCESS_KEY_ID and
AWS_ENDPOINT_URL). The run works in a local mirror under cache_dir, where the ranks write as they do to any run
directory. The mirror is filled from the bucket before the run starts and sent back after each checkpoint and when
the run ends, in the order a reader can trust: a checkpoint's files, then its manifest, then the run's other files,
then the `latest` pointers. An upload cut anywhere leaves the bucket naming the previous complete checkpoint, and a
checkpoint without its manifest is never downloaded."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)
SCHEMES = ("s3", "gs")  # what pyarrow.fs reaches without another package
SYNCED = ".synced.json"  # in the mirror: {path: [size, mtime_ns]} of each file as the bucket last had it
MANIFEST, POINTER = "manifest.json", "latest"  # a checkpoint's last file, and the file naming the newest one
CHECKPOINT_DIRS = ("checkpoints", "round_checkpoints")
_attached: dict[Path, RunStorage] = {}  # mirror -> its bucket, for the runs this process works on


class StorageError(RuntimeError):
    """The bucket could not be read or written; the message names the URI and the file."""


def scheme_of(path: str) -> str:
    """'s3' of 's3://bucket/x'; '' for a local path."""
    head, sep, _ = str(path).partition("://")
    return head.lower() if sep and "/" not in head else ""


def is_uri(path: str) -> bool:
    return bool(scheme_of(path))


def problems(output_dir: str, cache_dir: str) -> list[str]:
    """Config problems of the run's directories: an output_dir URI of a scheme not served, a cache_dir URI."""
    found = []
    scheme = scheme_of(output_dir)
    if scheme and scheme not in SCHEMES:
        found.append(f"output_dir={output_dir}: a URI must be {' or '.join(s + '://bucket/path' for s in SCHEMES)}")
    if is_uri(cache_dir):
        found.append(
            f"cache_dir={cache_dir}: must be a local or shared path (the mirror of an object-storage output_dir "
            "lives there); only output_dir may be s3:// or gs://"
        )
    return found


def mirror_of(uri: str, cache_dir: str) -> Path:
    """The local directory a run kept at uri works in: cache_dir/runs/<last part>-<hash of the URI>."""
    name = uri.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "run"
    digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return Path(cache_dir).expanduser().absolute() / "runs" / f"{name}-{digest}"


def local_run_dir(output_dir: str, cache_dir: str) -> Path:
    """Where the run's files are written on this machine: output_dir itself, or the mirror of a URI."""
    if is_uri(output_dir):
        return mirror_of(output_dir, cache_dir)
    return Path(output_dir).expanduser().absolute()


def _hidden(relative: str) -> bool:
    """Files that stay local: the run lock, the sync record, partial checkpoints and their conversions."""
    return any(part.startswith(".") for part in relative.split("/"))


def _checkpoint_of(relative: str) -> tuple[str, str] | None:
    """(checkpoint directory, tag) of a file inside one, else None."""
    parts = relative.split("/")
    return (parts[0], parts[1]) if len(parts) > 2 and parts[0] in CHECKPOINT_DIRS else None


def _is_pointer(relative: str) -> bool:
    parts = relative.split("/")
    return len(parts) == 2 and parts[0] in CHECKPOINT_DIRS and parts[1] == POINTER


class RunStorage:
    """The bucket copy of one run directory and its local mirror."""

    def __init__(self, uri: str, mirror: Path):
        from pyarrow import fs

        self.uri, self.mirror, self.ready = uri, Path(mirror), False
        try:
            self.fs, self.root = fs.FileSystem.from_uri(uri)
        except Exception as error:  # an unknown bucket syntax, a missing region: the URI is what to fix
            raise StorageError(f"output_dir={uri}: {error}") from error
        self.root = self.root.rstrip("/")

    def _remote(self) -> dict[str, int]:
        """{relative path: size} of every file under the run's URI."""
        from pyarrow import fs

        try:
            infos = self.fs.get_file_info(fs.FileSelector(self.root, recursive=True, allow_not_found=True))
        except Exception as error:
            raise StorageError(f"output_dir={self.uri}: listing it failed: {error}") from error
        start = len(self.root) + 1
        return {i.path[start:]: i.size for i in infos if i.type == fs.FileType.File}

    def _synced(self) -> dict[str, list[int]]:
        path = self.mirror / SYNCED
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        except ValueError:  # a record cut by a kill: everything counts as changed, which only costs uploads
            return {}

    def _record(self, synced: dict[str, list[int]]) -> None:
        partial = self.mirror / f"{SYNCED}.partial"
        partial.write_text(json.dumps(synced), encoding="utf-8")
        os.replace(partial, self.mirror / SYNCED)

    def _stamp(self, relative: str) -> list[int]:
        stat = (self.mirror / relative).stat()
        return [stat.st_size, stat.st_mtime_ns]

    def download(self) -> int:
        """The run's files from the bucket into the mirror, but for checkpoints whose manifest never arrived (an
        upload cut short); files the mirror has as the bucket does stay. Returns the number of files fetched."""
        remote, synced = self._remote(), self._synced()
        complete = {c for r in remote if (c := _checkpoint_of(r)) and r.endswith(f"/{MANIFEST}") and r.count("/") == 2}
        wanted = [r for r in remote if not _hidden(r) and (_checkpoint_of(r) is None or _checkpoint_of(r) in complete)]
        began, fetched = time.perf_counter(), 0
        self.mirror.mkdir(parents=True, exist_ok=True)
        for relative in sorted(wanted):
            local = self.mirror / relative
            if (
                local.exists()
                and synced.get(relative) == self._stamp(relative)
                and remote[relative] == local.stat().st_size
            ):
                continue  # the mirror has it as the bucket does
            self._get(relative, local)
            synced[relative] = self._stamp(relative)
            fetched += 1
        for relative in [r for r in remote if _is_pointer(r)]:
            self._repoint(relative, remote, complete)
        self._record(synced)
        self.ready = True
        if fetched:
            seconds = time.perf_counter() - began
            log.info("output_dir=%s: %d files downloaded to %s in %.1fs", self.uri, fetched, self.mirror, seconds)
        return fetched

    def _repoint(self, pointer: str, remote: dict[str, int], complete: set[tuple[str, str]]) -> None:
        """A pointer downloaded names a checkpoint the mirror has, else it goes (the newest complete one is used)."""
        path = self.mirror / pointer
        tag = path.read_text(encoding="utf-8").strip() if path.exists() else ""
        if (pointer.split("/")[0], tag) not in complete:
            path.unlink(missing_ok=True)

    def upload(self) -> int:
        """The mirror's new and changed files to the bucket, in the order that keeps it readable at every moment;
        then checkpoints the mirror pruned go from the bucket too. Returns the number of files sent."""
        if not self.ready:  # the mirror was never filled: sending it would overwrite the bucket with less
            return 0
        synced = self._synced()
        files = sorted(
            str(p.relative_to(self.mirror)) for p in self.mirror.rglob("*") if p.is_file() and not p.is_symlink()
        )
        files = [f for f in files if not _hidden(f)]
        changed = [f for f in files if synced.get(f) != self._stamp(f)]
        in_checkpoint = [f for f in changed if _checkpoint_of(f)]
        order = (
            [f for f in in_checkpoint if not f.endswith(f"/{MANIFEST}")]
            + [f for f in in_checkpoint if f.endswith(f"/{MANIFEST}")]
            + [f for f in changed if not _checkpoint_of(f) and not _is_pointer(f)]
            + [f for f in changed if _is_pointer(f)]
        )
        began = time.perf_counter()
        for relative in order:
            stamp = self._stamp(relative)
            self._put(relative)
            synced[relative] = stamp
            self._record(synced)  # a kill after this file re-sends only what follows
        kept, pruned, remote = set(files), set(), self._remote()
        for relative in [r for r in remote if r not in kept and not _hidden(r)]:
            if _checkpoint_of(relative) is None:
                continue  # files only the bucket has outside checkpoints stay (written by another tool)
            pruned.add(_checkpoint_of(relative))
            synced.pop(relative, None)
        for directory, tag in sorted(pruned):  # checkpoints the mirror pruned, or whose upload a kill cut
            self._delete(f"{directory}/{tag}", [r for r in remote if r.startswith(f"{directory}/{tag}/")])
        self._record(synced)
        if order:
            log.info("output_dir=%s: %d files uploaded in %.1fs", self.uri, len(order), time.perf_counter() - began)
        return len(order)

    def _get(self, relative: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.download")
        try:
            with self.fs.open_input_stream(f"{self.root}/{relative}") as source, open(partial, "wb") as out:
                while chunk := source.read(8 << 20):
                    out.write(chunk)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise StorageError(f"output_dir={self.uri}: downloading {relative} failed: {error}") from error
        os.replace(partial, local)

    def _put(self, relative: str) -> None:
        try:
            with (
                open(self.mirror / relative, "rb") as source,
                self.fs.open_output_stream(f"{self.root}/{relative}") as out,
            ):
                while chunk := source.read(8 << 20):
                    out.write(chunk)
        except OSError as error:
            raise StorageError(f"output_dir={self.uri}: uploading {relative} failed: {error}") from error

    def _delete(self, checkpoint: str, stored: list[str]) -> None:
        """A checkpoint the mirror no longer has (whole), or of its stored files those the mirror lacks."""
        try:
            if not (self.mirror / checkpoint).exists():
                self.fs.delete_dir(f"{self.root}/{checkpoint}")
                return
            for relative in [r for r in stored if not (self.mirror / r).is_file()]:
                self.fs.delete_file(f"{self.root}/{relative}")
        except OSError as error:  # a stale checkpoint left in the bucket is only clutter
            log.warning("output_dir=%s: could not delete %s: %s", self.uri, checkpoint, error)


@contextlib.contextmanager
def mirrored(output_dir: str, cache_dir: str, download: bool = True) -> Iterator[Path]:
    """The directory to run in: output_dir itself, or for a URI its mirror, filled from the bucket first (unless
    download is False: a run starting over) and uploaded when the block ends, however it ends."""
    if not is_uri(output_dir):
        yield Path(output_dir).expanduser().absolute()
        return
    mirror = mirror_of(output_dir, cache_dir)
    storage = RunStorage(output_dir, mirror)
    if download:
        storage.download()
    else:
        mirror.mkdir(parents=True, exist_ok=True)
        storage.ready = True
    _attached[mirror] = storage
    ended = False
    try:
        yield mirror
        ended = True
    finally:
        _attached.pop(mirror, None)
        try:
            storage.upload()
        except StorageError as error:  # a run that failed already: its own error is the one to see
            if ended:
                raise
            log.error("%s (the mirror %s keeps the run; rerunning uploads it)", error, mirror)


def checkpointed(run_dir: Path) -> None:
    """After a checkpoint of the run in run_dir: sent to its bucket, if it has one."""
    storage = _attached.get(Path(run_dir))
    if storage is not None:
        storage.upload()
