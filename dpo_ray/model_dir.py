"""What a model directory must hold before a run loads it, checked cheaply on the driver: each safetensors file's header
read and its tensors inside the file (a truncated or garbled file is named with its path, not found by a rank after
Ray has started), the shards an index names present, and tokenizer files where a tokenizer is loaded from it."""

from __future__ import annotations

import json
import struct
from pathlib import Path

# A tokenizer directory holds one of these (fast, SentencePiece, BPE, WordPiece, tiktoken): with none, transformers
# fails with "Couldn't instantiate the backend tokenizer" after importing everything.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "*.model", "*.tiktoken")
MAX_HEADER = 100 << 20  # the safetensors format's own limit on a header


def weights_problem(root: Path) -> str | None:
    """Why the safetensors weights in root cannot be loaded (the first problem found, naming its file), or None."""
    index = root / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as error:
            return f"{index}: not a safetensors index ({error})"
        missing = [name for name in shards if not (root / name).is_file()]
        if missing:
            return f"{index} names {len(missing)} shard(s) that are not there: {', '.join(missing[:3])}"
    for path in sorted(root.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            return f"{path}: {problem}"
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why one safetensors file is unreadable: a header that is cut, garbled or not JSON, or tensors that lie beyond
    its end or leave bytes between them unaccounted for (the format covers its data exactly); None if it reads."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes: too short for a safetensors header (a cut copy?)"
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER or 8 + length > size:
            return f"its header claims {length} bytes of a {size}-byte file: cut or garbled (copy it again)"
        try:
            header = json.loads(f.read(length))
        except ValueError:
            return "its header is not JSON: garbled (copy it again)"
    if not isinstance(header, dict):
        return "its header is not a table of tensors: garbled (copy it again)"
    data = size - 8 - length
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        numbers = isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
        if not (numbers and 0 <= offsets[0] <= offsets[1]):
            return f"tensor {name!r} has no valid data_offsets: garbled (copy it again)"
        end = max(end, offsets[1])
    if end > data:
        return f"its tensors need {end} bytes of data and the file holds {data}: cut short (copy it again)"
    if end < data:
        return f"{data - end} bytes past its last tensor: garbled (copy it again)"
    return None


def has_tokenizer(root: Path) -> bool:
    return any(any(root.glob(pattern)) for pattern in TOKENIZER_FILES)


def cache_damage(root: Path) -> str | None:
    """Why a model directory a built-in task cached cannot be used any more (it is then built again), or None."""
    if not any(root.glob("*.safetensors")):
        return "no safetensors weights"
    return weights_problem(root) or (None if has_tokenizer(root) else "no tokenizer files")
