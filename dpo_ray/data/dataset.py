"""Preference sources -> validated tokenised pairs, with a report of what was dropped and why."""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

from tqdm.auto import tqdm

from ..losses.registry import Kind, names_of
from .errors import DataError, DataReport, ErrorPolicy, NoUsableData
from .formats import PreferenceRow, normalise
from .loading import iter_rows
from .pairs_cache import PairsCache, pairs_key
from .tokenize import TokenizedPair, TokenizeSettings, tokenize_rows

log = logging.getLogger(__name__)


def _rows(sources: Sequence[Any], policy: ErrorPolicy, columns: dict[str, str]) -> Iterator[PreferenceRow]:
    for spec in sources:
        for source, index, raw in iter_rows(spec):
            policy.report.rows += 1
            try:
                if isinstance(raw, DataError):
                    raise raw
                yield normalise(raw, source, index, columns)
            except DataError as error:
                policy.handle(error)


def unpaired_examples(rows: Iterable[PreferenceRow]) -> list[PreferenceRow]:
    """KTO's examples: unpaired rows as they are, each pair as a desirable chosen and an undesirable rejected row (all
    desirable ones first, as TRL unpairs); then each example's mismatched completion is the previous example's (the
    first takes the last's), TRL's rotation, fixed here so that the reference scores each example once."""
    rows = list(rows)
    kept = [r for r in rows if r.label is not None]
    kept += [replace(r, rejected=None, label=True) for r in rows if r.label is None]
    kept += [replace(r, chosen=r.rejected, rejected=None, label=False) for r in rows if r.label is None]
    return [replace(r, rejected=kept[i - 1].chosen) for i, r in enumerate(kept)]


def _paired_only(rows: Iterable[PreferenceRow]) -> Iterator[PreferenceRow]:
    for row in rows:
        if row.label is not None:
            raise DataError(
                row.source,
                row.row,
                "completion",
                f"an unpaired row (prompt, completion, label) needs an unpaired loss: algo.loss_type="
                f"{' or '.join(names_of(Kind.UNPAIRED))}",
            )
        yield row


def load_pairs(
    sources: Sequence[Any],
    tokenizer,
    settings: TokenizeSettings,
    on_error: str = "raise",
    columns: dict[str, str] | None = None,
    unpaired: bool = False,
    cache_dir: str | None = None,
    progress: bool = False,
) -> tuple[list[TokenizedPair], DataReport]:
    """Every source's rows (columns renamed by columns: data.columns) as tokenised pairs, and what was dropped; with
    unpaired (KTO), as labelled examples beside their mismatched completions (see unpaired_examples). Past
    PARALLEL_ROWS rows they are tokenised in chunks by one process per core (at most MAX_PROCESSES), read as they
    go; with cache_dir, pairs made from the same files, tokenizer and settings before are read back instead."""
    cache, key = None, None
    if cache_dir:
        cache = PairsCache(cache_dir)
        key = pairs_key(sources, tokenizer, settings, on_error, dict(columns or {}), unpaired)
        cached = cache.load(key) if key else None
        if cached is not None:
            log.info("tokenised pairs: cache hit %s (%d %s)", cache.path(key), len(cached[0]), cached[1].unit)
            return cached
    report = DataReport(unit="examples" if unpaired else "pairs")
    policy = ErrorPolicy(on_error, report)
    rows = _rows(sources, policy, dict(columns or {}))
    rows = unpaired_examples(rows) if unpaired else _paired_only(rows)
    with tqdm(desc="tokenising", unit="row", disable=not progress, dynamic_ncols=True) as bar:
        pairs = _tokenized(rows, tokenizer, settings, policy, bar)
    if not pairs:
        raise NoUsableData(f"no usable preference pairs in {', '.join(map(str, sources))}: {report.summary()}")
    if key:
        cache.save(key, pairs, report)
    return pairs, report


PARALLEL_ROWS = 20_000  # fewer rows tokenise faster in this process (bench/data_scale.py: 10k rows 12.5 s vs 16.9 s)
CHUNK_ROWS = 2_000
MAX_PROCESSES = 16


def _tokenized(rows: Iterable[PreferenceRow], tokenizer, settings: TokenizeSettings, policy: ErrorPolicy, bar):
    """tokenize_rows over the rows: here for a few, else CHUNK_ROWS at a time in processes of their own (spawned:
    the caller may hold Ray's threads), results taken in row order so that the first bad row raises first."""
    rows = iter(rows)
    head = list(itertools.islice(rows, PARALLEL_ROWS))
    processes = min(os.cpu_count() or 1, MAX_PROCESSES)
    if len(head) < PARALLEL_ROWS or processes < 2:
        pairs = tokenize_rows(head, tokenizer, settings, policy)
        bar.update(len(head))
        return pairs
    chunks = _chunks(itertools.chain(head, rows), CHUNK_ROWS)
    context = multiprocessing.get_context("spawn")
    mode, pairs = policy.mode, []
    with ProcessPoolExecutor(processes, context, _start_worker, (tokenizer, settings, mode)) as pool:
        pending = []
        for chunk in chunks:  # at most 2 chunks a process in flight: rows are read as they are tokenised
            pending.append((len(chunk), pool.submit(_tokenize_chunk, chunk)))
            while len(pending) > 2 * processes:
                pairs += _merged(*pending.pop(0), policy.report, bar)
        for size, future in pending:
            pairs += _merged(size, future, policy.report, bar)
    return pairs


def _chunks(rows: Iterator[PreferenceRow], size: int) -> Iterator[list[PreferenceRow]]:
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


def _merged(size: int, future, report: DataReport, bar) -> list[TokenizedPair]:
    pairs, part = future.result()
    report.dropped.update(part.dropped)
    report.warnings.update(part.warnings)
    report.pairs += part.pairs
    bar.update(size)
    return pairs


_worker: tuple | None = None  # a tokenising process's (tokenizer, settings, error mode)


def _start_worker(tokenizer, settings: TokenizeSettings, mode: str) -> None:
    global _worker
    _worker = (tokenizer, settings, mode)


def _tokenize_chunk(rows: list[PreferenceRow]) -> tuple[list[TokenizedPair], DataReport]:
    tokenizer, settings, mode = _worker
    policy = ErrorPolicy(mode, DataReport())
    return tokenize_rows(rows, tokenizer, settings, policy), policy.report


def split_eval(
    pairs: list[TokenizedPair], fraction: float, seed: int
) -> tuple[list[TokenizedPair], list[TokenizedPair]]:
    """Hold out a seeded random share of pairs for evaluation (at least one on each side)."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(fraction * len(pairs))), len(pairs) - 1)
    held = set(order[:n_eval])
    return [p for i, p in enumerate(pairs) if i not in held], [pairs[i] for i in sorted(held)]
