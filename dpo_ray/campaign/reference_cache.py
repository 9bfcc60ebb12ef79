"""Reference log-probs cached on disk, keyed by the tokenised pairs, the reference model and the forward settings.
Nothing read back is trusted blindly: each file carries the SHA-256 of its values and their count, and a file that
cannot be read, fails its checksum, holds the wrong count or a non-finite value is logged with its path, removed and
recomputed."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save

from ..atomic import write_bytes
from ..data.tokenize import TokenizedPair

log = logging.getLogger(__name__)


def cache_key(pairs: Sequence[TokenizedPair], model_fingerprint: str, settings: dict[str, str]) -> str:
    digest = hashlib.sha256()
    digest.update(model_fingerprint.encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for p in pairs:
        digest.update(json.dumps([p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
    return digest.hexdigest()[:32]


def values_digest(chosen: torch.Tensor, rejected: torch.Tensor) -> str:
    """SHA-256 of the two float32 vectors' bytes."""
    digest = hashlib.sha256(chosen.contiguous().numpy().tobytes())
    digest.update(rejected.contiguous().numpy().tobytes())
    return digest.hexdigest()


class CacheFileError(ValueError):
    """A cache file that must not be used, and why."""


class ReferenceCache:
    def __init__(self, cache_dir: str):
        self.root = Path(cache_dir).expanduser() / "reference_logps"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def load(self, key: str, count: int | None = None) -> tuple[list[float], list[float]] | None:
        """The cached (chosen, rejected) of key (count values each, when given), or None: absent, or unusable (then
        logged with its path and removed, so the caller recomputes it)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return self._verified(path, count)
        except CacheFileError as error:
            log.warning("reference cache %s: %s; recomputing it", path, error)
            path.unlink(missing_ok=True)
            return None

    @staticmethod
    def _verified(path: Path, count: int | None) -> tuple[list[float], list[float]]:
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                chosen, rejected = f.get_tensor("chosen"), f.get_tensor("rejected")
        except Exception as error:  # whatever a damaged file raises (header, sizes, names): the file is unusable
            raise CacheFileError(f"unreadable ({type(error).__name__}: {error})") from None
        if meta.get("sha256") != values_digest(chosen, rejected):
            raise CacheFileError("its values do not match their checksum (altered or damaged)")
        chosen_list, rejected_list = chosen.tolist(), rejected.tolist()
        if count is not None and (len(chosen_list), len(rejected_list)) != (count, count):
            raise CacheFileError(f"holds {len(chosen_list)} values for {count} pairs")
        if not all(math.isfinite(x) for x in chosen_list + rejected_list):
            raise CacheFileError("holds non-finite values")
        return chosen_list, rejected_list

    def save(self, key: str, chosen: list[float], rejected: list[float]) -> None:
        tensors = {
            "chosen": torch.tensor(chosen, dtype=torch.float32),
            "rejected": torch.tensor(rejected, dtype=torch.float32),
        }
        meta = {"sha256": values_digest(tensors["chosen"], tensors["rejected"]), "pairs": str(len(chosen))}
        write_bytes(self.path(key), save(tensors, metadata=meta))
