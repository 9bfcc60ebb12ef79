"""After a run: its records, the failure-mode monitors, plots and a Markdown report. The rest of dpo-ray uses only
the two calls below."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..schema import MonitorConfig


def write_report(run_dir: Path, report_to=(), run_name: str = "") -> Path:
    """Build run_dir/report.md and its plots from what the run wrote; returns the report's path. With report_to, the
    plots also go to those trackers' runs of this run directory, at the last step logged."""
    from .markdown import PLOTS
    from .markdown import write_report as write
    from .records import load_records
    from .trackers import Trackers, report_names

    report = write(run_dir)
    if report_names(report_to):
        records = load_records(run_dir)
        step = max((row["step"] for row in records.steps + records.evals), default=0)
        plots = {path.stem: path for path in sorted((run_dir / PLOTS).glob("*.png"))}
        trackers = Trackers(run_dir, report_to, run_name, {}, resume=True)
        try:
            trackers.images(plots, step)
        finally:
            trackers.close()
    return report


def round_monitors(rows: Sequence[dict], thresholds: MonitorConfig) -> tuple[dict[str, float], list[str]]:
    """The monitors of an online campaign as of its last round row: their values as metrics (monitor/<name>), and a
    warning for each that trips."""
    from .monitors import as_metrics, round_checks, warnings

    checks = round_checks(rows, thresholds)
    return as_metrics(checks), warnings(checks)
