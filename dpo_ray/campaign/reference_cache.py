"""Reference log-probs cached on disk, keyed by the tokenised pairs, the reference model and the forward settings."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load, save

from ..atomic import write_bytes
from ..data.tokenize import TokenizedPair


def cache_key(pairs: Sequence[TokenizedPair], model_fingerprint: str, settings: dict[str, str]) -> str:
    digest = hashlib.sha256()
    digest.update(model_fingerprint.encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for p in pairs:
        digest.update(json.dumps([p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
    return digest.hexdigest()[:32]


class ReferenceCache:
    def __init__(self, cache_dir: str):
        self.root = Path(cache_dir).expanduser() / "reference_logps"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def load(self, key: str) -> tuple[list[float], list[float]] | None:
        path = self.path(key)
        if not path.exists():
            return None
        tensors = load(path.read_bytes())
        return tensors["chosen"].tolist(), tensors["rejected"].tolist()

    def save(self, key: str, chosen: list[float], rejected: list[float]) -> None:
        tensors = {
            "chosen": torch.tensor(chosen, dtype=torch.float32),
            "rejected": torch.tensor(rejected, dtype=torch.float32),
        }
        write_bytes(self.path(key), save(tensors))
