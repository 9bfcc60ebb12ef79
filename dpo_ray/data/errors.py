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

    def __reduce__(self):  # raised in a tokenising process, it crosses back whole
        return type(self), (self.source, self.row, self.field, self.reason)


class NoUsableData(ValueError):
    """Every row of the sources was dropped: the message names them and counts the reasons."""


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

    def dropped_note(self) -> str:
        """The dropped rows as a warning: how many of how many, each reason with what keeps such rows ('' if none)."""
        count = sum(self.dropped.values())
        if not count:
            return ""
        reasons = "; ".join(f"{n} {why} ({KEEPS.get(why, SKIPPED)})" for why, n in self.dropped.most_common())
        return f"{count} of {self.rows} rows ({count / max(self.rows, 1):.0%}) dropped: {reasons}"

    def summary(self) -> str:
        text = f"{self.rows} rows -> {self.pairs} {self.unit}"
        if self.dropped:
            text += "; dropped: " + ", ".join(f"{n} {why}" for why, n in self.dropped.most_common())
        if self.warnings:
            text += "; warnings: " + ", ".join(f"{n} {why}" for why, n in self.warnings.most_common())
        return text


# What keeps the rows each reason drops.
KEEPS = {
    "chosen == rejected": "they state no preference",
}
SKIPPED = "skipped by data.on_error=skip: fix those rows to keep them"


class ErrorPolicy:
    """data.on_error: raise the first DataError, or skip the row and count its reason."""

    def __init__(self, mode: str, report: DataReport):
        self.mode, self.report = str(mode), report

    def handle(self, error: DataError) -> None:
        if self.mode == "raise":
            reason = f"{error.reason} (data.on_error=skip drops such rows, counts them and goes on)"
            raise DataError(error.source, error.row, error.field, reason) from None
        self.report.drop(f"{error.field}: {error.reason}")
        log.debug("skipped %s", error)
