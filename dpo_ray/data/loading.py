"""Raw rows from every source users have: files (.json, .jsonl, .parquet; .gz/.bz2/.xz/.zst compressed), directories
(save_to_disk Dataset or DatasetDict, or data files, split by their names as `datasets` does), a dataset name for
`datasets.load_dataset` (the local HF cache when offline), or an in-memory datasets.Dataset. `SOURCE:SPLIT` picks a
split of a directory or a name."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import lzma
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import DataError

log = logging.getLogger(__name__)
RawRow = tuple[str, int, Any]  # (source, row index, raw row, or the DataError that reading it raised)
FORMATS = (".jsonl", ".json", ".parquet")
COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
SPLIT = re.compile(r"[A-Za-z0-9_.\-]+")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?")  # a hub id: NAME or OWNER/NAME


def split_spec(spec: str) -> tuple[str, str | None]:
    """'SOURCE' or 'SOURCE:SPLIT' -> (source, split or None); a path that exists as written is never cut."""
    if Path(spec).expanduser().exists():
        return spec, None
    source, colon, split = spec.rpartition(":")
    return (source, split) if colon and source and SPLIT.fullmatch(split) else (spec, None)


def is_dataset_name(source: str) -> bool:
    """Whether a source that is not a path reads as a dataset name (not a missing file: those end in a data suffix)."""
    return bool(NAME.fullmatch(source)) and not source.endswith(FORMATS + COMPRESSED)


def data_format(path: Path) -> tuple[str, str]:
    """(format suffix, compression suffix or '') of a data file: prefs.jsonl.gz -> ('.jsonl', '.gz')."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        return (suffixes[-2] if len(suffixes) > 1 else ""), suffixes[-1]
    return (suffixes[-1] if suffixes else ""), ""


class InMemorySource:
    """Rows handed over in Python (a datasets.Dataset, or a list of dicts in any layout the files accept), named as
    errors and notes should name them (train_dataset)."""

    def __init__(self, rows: Any, name: str):
        if isinstance(rows, dict):  # a DatasetDict (or one row): iterating it would yield its keys
            keys = ", ".join(map(str, list(rows)[:4]))
            raise ValueError(
                f'{name}: a dict of {keys}; give one split (a Dataset or a list of rows), e.g. {name}=ds["train"]'
            )
        if isinstance(rows, (str, bytes)) or not hasattr(rows, "__iter__"):
            raise ValueError(f"{name}: a datasets.Dataset or a list of dicts, not {type(rows).__name__}")
        self.rows, self.name = rows, name

    def __str__(self) -> str:
        return self.name


def iter_rows(spec: str | Path | Any) -> Iterator[RawRow]:
    """Yield (source, row index, row) for every row of one data source."""
    if isinstance(spec, InMemorySource):
        yield from _iter_dataset(spec.rows, spec.name)
        return
    if not isinstance(spec, (str, Path)):
        yield from _iter_dataset(spec, "<in-memory dataset>")
        return
    source, split = split_spec(str(spec))
    path = Path(source).expanduser()
    if path.is_dir():
        yield from _iter_directory(path, split)
    elif path.exists():
        if split is not None:
            raise ValueError(f"{spec}: ':{split}' names a split, which a directory or a dataset name has, not a file")
        yield from _iter_file(path)
    elif path.is_symlink():
        raise FileNotFoundError(f"{path}: a symbolic link that leads nowhere (a loop, or a missing target)")
    elif is_dataset_name(source):
        yield from _iter_named(source, split)
    else:
        raise FileNotFoundError(f"{path}: no such preference file or directory")


def _open(path: Path, compression: str):
    if compression == ".zst":
        try:
            import zstandard
        except ImportError:
            raise ValueError(f"{path}: reading .zst needs the zstandard package (pip install zstandard)") from None
        return io.BufferedReader(zstandard.open(path, "rb"))  # buffered: iterable by line
    return {"": open, ".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[compression](path, "rb")


def _iter_file(path: Path) -> Iterator[RawRow]:
    source, (kind, compression) = str(path), data_format(path)
    if kind == ".parquet":
        if compression:
            raise ValueError(f"{source}: Parquet compresses inside the file; use the .parquet file itself")
        yield from _iter_parquet(path)
        return
    if kind not in (".jsonl", ".json"):
        raise ValueError(
            f"{source}: unsupported preference file type (use .json, .jsonl or .parquet, optionally compressed "
            f"{'/'.join(COMPRESSED)}, a directory of them, a save_to_disk directory, or a dataset name)"
        )
    try:
        with _open(path, compression) as f:
            if kind == ".jsonl":  # streamed: a large file is never held whole
                yield from _iter_json_lines(f, source)
                return
            data = f.read()
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise DataError(source, 0, "<file>", f"cannot be read ({e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(source, 0, "<utf-8>", f"not valid UTF-8 (byte {e.start})") from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg != "Extra data":
            raise DataError(source, 0, "<json>", f"not valid JSON ({e.msg} at line {e.lineno})") from None
        log.info("%s: holds one JSON object per line (JSON Lines); read line by line", source)
        yield from _iter_json_lines(data.split(b"\n"), source)
        return
    if not isinstance(rows, list):
        raise DataError(source, 0, "<json>", "a .json file must hold a list of rows, or one row per line")
    for index, row in enumerate(rows):
        yield source, index, row


def _iter_json_lines(lines: Iterable[bytes], source: str) -> Iterator[RawRow]:
    """Each line a row; a line that is not UTF-8 or not JSON is that row's error, not the file's."""
    for index, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            yield source, index, json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            yield source, index, DataError(source, index, "<utf-8>", f"not valid UTF-8 (byte {e.start})")
        except json.JSONDecodeError as e:
            yield source, index, DataError(source, index, "<json>", f"not valid JSON ({e.msg} at column {e.colno})")


def _iter_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise DataError(str(path), 0, "<parquet>", f"not a readable Parquet file ({e})") from None
    for index, row in enumerate(table.to_pylist()):
        yield str(path), index, row


def _pick_split(splits: list[str], split: str | None, where: str) -> str:
    """The split asked for, else 'train' (said when there are others); an unknown or missing one names the splits."""
    if split is None and "train" in splits:
        if len(splits) > 1:
            log.info("%s: reading split 'train' (also there: %s; pick one with %s:SPLIT)", where, splits, where)
        return "train"
    if split in splits:
        return split
    asked = f"no split {split!r}" if split else "no 'train' split"
    raise ValueError(f"{where}: {asked}; its splits: {', '.join(splits)} (name one: {where}:{splits[0]})")


def _iter_directory(path: Path, split: str | None) -> Iterator[RawRow]:
    import datasets

    if (path / "dataset_dict.json").exists():
        saved = datasets.load_from_disk(str(path))
        chosen = _pick_split(list(saved), split, str(path))
        yield from _iter_dataset(saved[chosen], f"{path}:{chosen}")
    elif (path / "state.json").exists():
        if split is not None:
            raise ValueError(f"{path}:{split}: a save_to_disk Dataset directory has no splits; drop ':{split}'")
        yield from _iter_dataset(datasets.load_from_disk(str(path)), str(path))
    else:
        for file in _data_files(path, split):
            yield from _iter_file(file)


def _data_files(path: Path, split: str | None) -> list[Path]:
    """The data files of a directory in one split, split by their names as `datasets` does (train*, test*, ...; all
    of them are 'train' when no name says otherwise)."""
    from datasets.data_files import EmptyDatasetError, get_data_patterns, resolve_pattern

    try:
        patterns = {str(k): v for k, v in get_data_patterns(str(path)).items()}
    except EmptyDatasetError:
        patterns = {}
    by_split = {}
    for name, globs in patterns.items():
        files = set()
        for glob in globs:
            try:
                files.update(resolve_pattern(glob, str(path)))
            except FileNotFoundError:
                continue
        kept = sorted(Path(f) for f in files if data_format(Path(f))[0] in FORMATS)
        if kept:
            by_split[name] = kept
    if not by_split:
        raise ValueError(
            f"{path}: a directory with no .json, .jsonl or .parquet files (compressed or not) and not a save_to_disk "
            "directory"
        )
    return by_split[_pick_split(list(by_split), split, str(path))]


def _iter_named(name: str, split: str | None) -> Iterator[RawRow]:
    """A dataset name for `datasets.load_dataset`: from the hub, or the local HF cache when offline."""
    import datasets

    try:
        names = datasets.get_dataset_split_names(name)
    except Exception as e:  # no network and nothing cached, or no such dataset: say both, whatever datasets raised
        raise ValueError(
            f"{name}: not a local file or directory, and `datasets` cannot load it as a dataset name "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); offline, only datasets already in the "
            "HF cache load (HF_DATASETS_OFFLINE=1)"
        ) from None
    chosen = _pick_split(list(names), split, name)
    yield from _iter_dataset(datasets.load_dataset(name, split=chosen), f"{name}:{chosen}")


def _iter_dataset(dataset: Any, source: str) -> Iterator[RawRow]:
    for index, row in enumerate(dataset):
        yield source, index, row
