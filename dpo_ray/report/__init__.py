"""After a run: its records, the failure-mode monitors, plots and a Markdown report. The rest of dpo-ray uses only
the two calls below."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import MonitorConfig


def write_report(run_dir: Path) -> Path:
    """Build run_dir/report.md and its plots from what the run wrote; returns the report's path."""
    from .markdown import write_report as write

    return write(run_dir)


def round_monitors(rows: Sequence[dict], thresholds: MonitorConfig) -> tuple[dict[str, float], list[str]]:
    """The monitors of an online campaign as of its last round row: their values as metrics (monitor/<name>), and a
    warning for each that trips."""
    from .monitors import as_metrics, round_checks, warnings

    checks = round_checks(rows, thresholds)
    return as_metrics(checks), warnings(checks)
