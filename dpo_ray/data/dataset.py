"""Preference sources -> validated tokenised pairs, with a report of what was dropped and why."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from ..losses.registry import Kind, names_of
from .errors import DataError, DataReport, ErrorPolicy
from .formats import PreferenceRow, normalise
from .loading import iter_rows
from .tokenize import TokenizedPair, TokenizeSettings, tokenize_rows


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
) -> tuple[list[TokenizedPair], DataReport]:
    """Every source's rows (columns renamed by columns: data.columns) as tokenised pairs, and what was dropped; with
    unpaired (KTO), as labelled examples beside their mismatched completions (see unpaired_examples)."""
    report = DataReport(unit="examples" if unpaired else "pairs")
    policy = ErrorPolicy(on_error, report)
    rows = _rows(sources, policy, dict(columns or {}))
    rows = unpaired_examples(rows) if unpaired else _paired_only(rows)
    pairs = tokenize_rows(rows, tokenizer, settings, policy)
    if not pairs:
        raise ValueError(f"no usable preference pairs in {', '.join(map(str, sources))}: {report.summary()}")
    return pairs, report


def split_eval(
    pairs: list[TokenizedPair], fraction: float, seed: int
) -> tuple[list[TokenizedPair], list[TokenizedPair]]:
    """Hold out a seeded random share of pairs for evaluation (at least one on each side)."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(fraction * len(pairs))), len(pairs) - 1)
    held = set(order[:n_eval])
    return [p for i, p in enumerate(pairs) if i not in held], [pairs[i] for i in sorted(held)]
