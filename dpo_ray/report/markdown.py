"""`report.md` for a run directory: a start-vs-end summary table, the monitors' verdicts, and the plots, embedded
as relative PNG links so that any Markdown viewer shows it (no server)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from ..atomic import write_text
from ..run_files import REPORT, SUMMARY_JSON
from ..schema import MonitorConfig
from .monitors import Check, run_checks, warnings
from .plots import frontier_plot, phases_plot, rounds_plot, timeline_plot, training_plot
from .records import RunRecords, load_records

log = logging.getLogger(__name__)
PLOTS = "plots"

STEP_ROWS = [
    ("loss", "training loss"),
    ("rewards/accuracies", "training reward accuracy"),
    ("rewards/margins", "training reward margin"),
    ("kl/chosen", "KL to reference on chosen (nats/token)"),
    ("grad_norm", "grad norm"),
    ("tokens_per_second", "tokens/s"),
]
EVAL_ROWS = [
    ("eval_loss", "held-out loss"),
    ("eval_rewards/accuracies", "held-out reward accuracy"),
    ("eval_rewards/margins", "held-out reward margin"),
]
ROUND_ROWS = [
    ("reward/mean", "mean reward of samples"),
    ("pairs", "pairs"),
    ("eval/sampled_reward", "held-out sampled reward"),
    ("eval/greedy_reward", "held-out greedy reward"),
    ("eval/kl", "KL to reference (nats/response)"),
    ("eval/kl_to_round_reference", "KL to the round's reference (nats/response)"),
    ("eval/win_rate", "held-out win rate vs the baseline (judge)"),
    ("eval/length_controlled_win_rate", "length-controlled win rate"),
    ("eval/length", "held-out sampled length (tokens)"),
    ("time/round", "seconds per round"),
]
SummaryRow = tuple[str, str, float, float, str]  # label, key, start, end, where


def _first_last(rows: Sequence[dict], key: str, x_key: str) -> tuple[float, float, str] | None:
    found = [row for row in rows if isinstance(row.get(key), (int, float))]
    if not found:
        return None
    return found[0][key], found[-1][key], f"{x_key} {found[0][x_key]} -> {found[-1][x_key]}"


def summary_rows(records: RunRecords) -> list[SummaryRow]:
    """Start and end value of each headline metric, with where they were read (steps, evaluations, rounds)."""
    out: list[SummaryRow] = []
    for rows, table, x_key in (
        (records.steps, STEP_ROWS, "step"),
        (records.evals, EVAL_ROWS, "step"),
        (records.rounds, ROUND_ROWS, "round"),
    ):
        for key, label in table:
            span = _first_last(rows, key, x_key)
            if span:
                out.append((label, key, span[0], span[1], span[2]))
    summary = records.run_dir / SUMMARY_JSON
    if summary.exists():
        data = json.loads(summary.read_text(encoding="utf-8"))
        for key in sorted(k for k in data.get("after", {}) if k.startswith("task/") and k in data.get("before", {})):
            out.append((key, key, data["before"][key], data["after"][key], "before -> after training"))
    return out


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _summary_table(rows: Sequence[SummaryRow]) -> str:
    lines = ["| metric | key | start | end | read at |", "|---|---|---|---|---|"]
    lines += [f"| {label} | `{key}` | {_number(a)} | {_number(b)} | {where} |" for label, key, a, b, where in rows]
    return "\n".join(lines)


def _checks_table(checks: Sequence[Check]) -> str:
    lines = ["| monitor | value | threshold | status | measured on |", "|---|---|---|---|---|"]
    lines += [f"| {c.monitor} | {_number(c.value)} | {c.threshold:g} | {c.status} | {c.detail} |" for c in checks]
    return "\n".join(lines)


def monitor_config(records: RunRecords) -> MonitorConfig:
    """The run's own thresholds (config.json), defaults for any it lacks."""
    saved = records.config.get("monitor", {})
    return MonitorConfig(**{f.name: saved[f.name] for f in fields(MonitorConfig) if f.name in saved})


def write_report(run_dir: Path) -> Path:
    """Build report.md and plots/*.png in run_dir; monitor warnings are also logged."""
    records = load_records(Path(run_dir))
    plots_dir = records.run_dir / PLOTS
    checks = run_checks(records, monitor_config(records))
    tripped = warnings(checks)
    for warning in tripped:
        log.warning("monitor: %s", warning)
    kind = "online" if records.rounds else "offline"
    parts = [
        f"# dpo-ray report: {records.run_dir.name}",
        "",
        f"{kind} run, {len(records.steps)} training steps"
        + (f", {len(records.rounds) - 1} rounds" if records.rounds else "")
        + f". Made by `dpo-ray report {records.run_dir}`.",
        "",
        "## Summary",
        "",
        _summary_table(summary_rows(records)),
        "",
        "## Monitors",
        "",
    ]
    parts += [f"- **WARNING** {w}" for w in tripped] or ["No monitor tripped."]
    parts += ["", _checks_table(checks), ""]
    pictures = [
        ("Online rounds", rounds_plot(records, plots_dir / "rounds.png")),
        ("Reward vs KL", frontier_plot(records, plots_dir / "frontier.png")),
        ("Time per phase", phases_plot(records, plots_dir / "phases.png")),
        ("Round timeline", timeline_plot(records, plots_dir / "timeline.png")),
        ("Training", training_plot(records, plots_dir / "training.png")),
    ]
    for title, path in pictures:
        if path is not None:
            parts += [f"## {title}", "", f"![{title}]({PLOTS}/{path.name})", ""]
    report = records.run_dir / REPORT
    write_text(report, "\n".join(parts))
    return report
