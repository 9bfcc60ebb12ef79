"""Tokenised pairs kept on disk, keyed by everything that made them: the source files' bytes, the tokenizer's files,
the tokenisation settings, the column mapping, the error policy and this code's version. A second load of the same
data reads them back in seconds instead of tokenising hundreds of thousands of rows again. Rows given in memory, or
a dataset name, have no bytes here to key on and are not cached."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_bytes
from ..file_digests import sha256
from .errors import DataReport
from .loading import split_spec
from .tokenize import TokenizedPair, TokenizeSettings

log = logging.getLogger(__name__)
VERSION = 2  # bump when tokenisation changes what it makes of a row (2: long prompts cut, not dropped)
TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*", "merges.txt", "*.model")
TEMPLATE_FILES = ("*.jinja", "chat_template.json")
FIELDS = ("prompt_ids", "chosen_ids", "rejected_ids")


def source_files(source: Any) -> list[Path] | None:
    """The local files a source reads (a directory's, in name order), or None: rows in memory, or a dataset name."""
    if not isinstance(source, str):
        return None
    path = Path(split_spec(source)[0]).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return None


def pairs_key(
    sources: Sequence[Any], tokenizer, settings: TokenizeSettings, on_error: str, columns: dict, unpaired: bool
) -> str | None:
    """The cache key of these pairs, or None when a source has no files here to key on."""
    digest = hashlib.sha256()
    for source in sources:
        files = source_files(source)
        if files is None:
            return None
        digest.update(str(source).encode())
        for file in files:
            digest.update(sha256(file).encode())
    tokenizer_dir = Path(getattr(tokenizer, "name_or_path", "") or "")
    if not tokenizer_dir.is_dir():
        return None
    for pattern in TOKENIZER_FILES + TEMPLATE_FILES:
        for file in sorted(tokenizer_dir.glob(pattern)):
            digest.update(file.name.encode() + sha256(file).encode())
    options = [VERSION, asdict(settings), on_error, sorted(dict(columns).items()), unpaired]
    digest.update(json.dumps(options, default=str).encode())
    return digest.hexdigest()[:32]


class PairsCache:
    def __init__(self, cache_dir: str):
        self.root = Path(cache_dir).expanduser() / "tokenized_pairs"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def load(self, key: str) -> tuple[list[TokenizedPair], DataReport] | None:
        """The pairs and load report kept under key, or None (absent, or unreadable: then removed and made anew)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with np.load(path) as stored:
                report = json.loads(bytes(stored["report"]).decode())
                columns = [(stored[f"{f}_values"].tolist(), stored[f"{f}_ends"].tolist()) for f in FIELDS]
                labels = stored["labels"].tolist()
        except Exception as error:  # a damaged file, whatever numpy raises for it: tokenise again
            log.warning("tokenised pairs cache %s: unreadable (%s); tokenising again", path, error)
            path.unlink(missing_ok=True)
            return None
        parts = [_split(values, ends) for values, ends in columns]
        pairs = [TokenizedPair(p, c, r, None if label < 0 else bool(label)) for p, c, r, label in zip(*parts, labels)]
        loaded = DataReport(report["rows"], report["pairs"], report["unit"])
        loaded.dropped, loaded.warnings = Counter(report["dropped"]), Counter(report["warnings"])
        return pairs, loaded

    def save(self, key: str, pairs: Sequence[TokenizedPair], report: DataReport) -> None:
        arrays = {}
        for name in FIELDS:
            seqs = [getattr(p, name) for p in pairs]
            arrays[f"{name}_values"] = np.fromiter((t for s in seqs for t in s), dtype=np.int64)
            arrays[f"{name}_ends"] = np.cumsum([len(s) for s in seqs], dtype=np.int64)
        arrays["labels"] = np.array([-1 if p.label is None else int(p.label) for p in pairs], dtype=np.int8)
        summary = {
            "rows": report.rows,
            "pairs": report.pairs,
            "unit": report.unit,
            "dropped": dict(report.dropped),
            "warnings": dict(report.warnings),
        }
        arrays["report"] = np.frombuffer(json.dumps(summary).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_bytes(self.path(key), buffer.getvalue())


def _split(values: list[int], ends: list[int]) -> list[tuple[int, ...]]:
    starts = [0, *ends[:-1]]
    return [tuple(values[a:b]) for a, b in zip(starts, ends)]
