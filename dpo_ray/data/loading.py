"""Raw rows from local files (.json, .jsonl, .parquet, save_to_disk directories) or an in-memory datasets.Dataset."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DataError

RawRow = tuple[str, int, Any]  # (source, row index, raw row, or the DataError that reading it raised)


def iter_rows(spec: str | Path | Any) -> Iterator[RawRow]:
    """Yield (source, row index, row) for every row of one data source."""
    if not isinstance(spec, (str, Path)):
        yield from _iter_dataset(spec, "<in-memory dataset>")
        return
    path = Path(spec).expanduser()
    source = str(path)
    if path.is_dir():
        yield from _iter_saved_dataset(path)
    elif not path.exists():
        raise FileNotFoundError(f"{source}: no such preference file or directory")
    elif path.suffix == ".jsonl":
        with path.open("rb") as f:  # decoded line by line, so one bad line is one bad row, not a failed file
            for index, raw in enumerate(f):
                if not raw.strip():
                    continue
                try:
                    yield source, index, json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    yield source, index, DataError(source, index, "<utf-8>", f"not valid UTF-8 (byte {e.start})")
                except json.JSONDecodeError as e:
                    yield (
                        source,
                        index,
                        DataError(source, index, "<json>", f"not valid JSON ({e.msg} at column {e.colno})"),
                    )
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(source, 0, "<utf-8>", f"not valid UTF-8 (byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise DataError(source, 0, "<json>", f"not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, list):
            raise DataError(
                source, 0, "<json>", "a .json file must hold a list of rows (use .jsonl for one row per line)"
            )
        for index, row in enumerate(data):
            yield source, index, row
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for index, row in enumerate(pq.read_table(path).to_pylist()):
            yield source, index, row
    else:
        raise ValueError(
            f"{source}: unsupported preference file type (use .json, .jsonl, .parquet or a save_to_disk directory)"
        )


def _iter_saved_dataset(path: Path) -> Iterator[RawRow]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ValueError(f"{path}: a DatasetDict without a 'train' split; point at one split's directory instead")
        loaded = loaded["train"]
    yield from _iter_dataset(loaded, str(path))


def _iter_dataset(dataset: Any, source: str) -> Iterator[RawRow]:
    for index, row in enumerate(dataset):
        yield source, index, row
