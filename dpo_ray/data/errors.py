"""Data errors name the file, the row and the field, and count by reason when rows are skipped."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class DataError(ValueError):
    def __init__(self, source: str, row: int, field_name: str, reason: str):
        super().__init__(f"{source}: row {row}: field '{field_name}': {reason}")
        self.source, self.row, self.field, self.reason = source, row, field_name, reason


@dataclass
class DataReport:
    """What loading did to the rows: how many came in, how many pairs went out, and why the rest were dropped."""

    rows: int = 0
    pairs: int = 0
    unit: str = "pairs"  # what a row becomes: pairs, or KTO's labelled examples
    dropped: Counter = field(default_factory=Counter)
    warnings: Counter = field(default_factory=Counter)

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def summary(self) -> str:
        text = f"{self.rows} rows -> {self.pairs} {self.unit}"
        if self.dropped:
            text += "; dropped: " + ", ".join(f"{n} {why}" for why, n in self.dropped.most_common())
        if self.warnings:
            text += "; warnings: " + ", ".join(f"{n} {why}" for why, n in self.warnings.most_common())
        return text


class ErrorPolicy:
    """data.on_error: raise the first DataError, or skip the row and count its reason."""

    def __init__(self, mode: str, report: DataReport):
        self.mode, self.report = str(mode), report

    def handle(self, error: DataError) -> None:
        if self.mode == "raise":
            raise error
        self.report.drop(f"{error.field}: {error.reason}")
        log.debug("skipped %s", error)
