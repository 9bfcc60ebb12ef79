"""Preference sources -> validated tokenised pairs, with a report of what was dropped and why."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

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


def load_pairs(
    sources: Sequence[Any],
    tokenizer,
    settings: TokenizeSettings,
    on_error: str = "raise",
    columns: dict[str, str] | None = None,
) -> tuple[list[TokenizedPair], DataReport]:
    """Every source's rows (columns renamed by columns: data.columns) as tokenised pairs, and what was dropped."""
    report = DataReport()
    policy = ErrorPolicy(on_error, report)
    pairs = tokenize_rows(_rows(sources, policy, dict(columns or {})), tokenizer, settings, policy)
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
