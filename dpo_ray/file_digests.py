"""Size and SHA-256 of files, on a few threads (hashlib releases the GIL): what a checkpoint's manifest holds. Below
every layer: the policy ranks hash the shards they wrote, the campaign the rest."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

THREADS = 4


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def digests(directory: str | Path, names: Sequence[str]) -> dict[str, list]:
    """{name: [size, sha256]} of each file named relative to directory."""
    directory = Path(directory)
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        hashes = list(pool.map(lambda n: sha256(directory / n), names))
    return {name: [(directory / name).stat().st_size, h] for name, h in zip(names, hashes)}
