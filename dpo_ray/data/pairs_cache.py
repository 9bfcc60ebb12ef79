"""Tokenised pairs kept on disk, keyed by everything that made them: the source files' bytes, the tokenizer's files,
the tokenisation settings, the column mapping, the error policy and this code's version. A second load of the same
data reads them back in seconds instead of tokenising hundreds of thousands of rows again. Rows given in memory, or
a dataset name, have no bytes here to key on and are not cached."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_file
from ..file_digests import sha256
from .errors import DataReport
from .loading import split_spec
from .tokenize import TokenizedPair, TokenizeSettings, pair_from_bytes

log = logging.getLogger(__name__)
VERSION = 3  # bump when tokenisation or this file changes (2: long prompts cut, not dropped; 3: int32 ids, one array)
TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*", "merges.txt", "*.model")
TEMPLATE_FILES = ("*.jinja", "chat_template.json")


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
                ids, bounds, labels = stored["ids"], stored["bounds"].tolist(), stored["labels"].tolist()
        except Exception as error:  # a damaged file, whatever numpy raises for it: tokenise again
            log.warning("tokenised pairs cache %s: unreadable (%s); tokenising again", path, error)
            path.unlink(missing_ok=True)
            return None
        starts = [0, *(end for _, _, end in bounds[:-1])]
        pairs = [
            pair_from_bytes(ids[start:end].tobytes(), prompt_end - start, chosen_end - start, _label(label))
            for start, (prompt_end, chosen_end, end), label in zip(starts, bounds, labels, strict=True)
        ]
        loaded = DataReport(report["rows"], report["pairs"], report["unit"])
        loaded.dropped, loaded.warnings = Counter(report["dropped"]), Counter(report["warnings"])
        return pairs, loaded

    def save(self, key: str, pairs: Sequence[TokenizedPair], report: DataReport) -> None:
        lengths = np.fromiter((len(p.ids) for p in pairs), dtype=np.int64, count=len(pairs))
        ends = np.cumsum(lengths)
        ids = np.empty(int(ends[-1]) if len(pairs) else 0, dtype=np.int32)  # filled in place: one copy of the ids
        for pair, end, n in zip(pairs, ends.tolist(), lengths.tolist(), strict=True):
            ids[end - n : end] = np.frombuffer(pair.ids, dtype=np.int32)
        cuts = np.array([p.cuts for p in pairs], dtype=np.int64).reshape(-1, 2)
        arrays = {
            "ids": ids,
            "bounds": np.column_stack([(ends - lengths)[:, None] + cuts, ends]),
            "labels": np.array([-1 if p.label is None else int(p.label) for p in pairs], dtype=np.int8),
        }
        summary = {
            "rows": report.rows,
            "pairs": report.pairs,
            "unit": report.unit,
            "dropped": dict(report.dropped),
            "warnings": dict(report.warnings),
        }
        arrays["report"] = np.frombuffer(json.dumps(summary).encode(), dtype=np.uint8)
        write_file(self.path(key), lambda f: np.savez(f, **arrays))


def _label(stored: int) -> bool | None:
    return None if stored < 0 else bool(stored)
