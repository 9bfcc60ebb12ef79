"""A run directory's records, as the report reads them: per-step training metrics, held-out evaluations, online rounds,
the statistics of the offline pairs, and the run's config."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..run_files import CONFIG, DATA_STATS, METRICS, ROUNDS

log = logging.getLogger(__name__)


@dataclass
class RunRecords:
    run_dir: Path
    steps: list[dict] = field(default_factory=list)  # training steps: {"step", "loss", "rewards/...", ...}
    evals: list[dict] = field(default_factory=list)  # held-out evaluations: {"step", "eval_loss", ...}
    rounds: list[dict] = field(default_factory=list)  # online rounds; round 0 is the starting policy
    data_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    config: dict = field(default_factory=dict)


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows, lines = [], path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):  # the line a crash cut: what it held is lost, the rest is whole
                log.warning("%s: line %d was cut short (%s); read without it", path, number, e.msg)
                continue
            raise ValueError(f"{path}: line {number}: not JSON ({e.msg})") from None
    return rows


def load_records(run_dir: Path) -> RunRecords:
    """Everything the report shows; a directory that holds no metrics is an error naming it."""
    run_dir = Path(run_dir).expanduser()
    metrics = _jsonl(run_dir / METRICS)
    if not metrics:
        raise ValueError(f"{run_dir}: no metrics.jsonl with rows; is it a dpo-ray run directory?")
    records = RunRecords(run_dir)
    steps: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    for row in metrics:  # a resumed run appends the steps after its checkpoint again: the later rows win
        if "loss" in row:
            steps[row["step"]] = row
        elif any(key.startswith("eval_") for key in row):
            evals[row["step"]] = row
    records.steps, records.evals = [steps[k] for k in sorted(steps)], [evals[k] for k in sorted(evals)]
    records.rounds = _jsonl(run_dir / ROUNDS)
    if (run_dir / DATA_STATS).exists():
        records.data_stats = json.loads((run_dir / DATA_STATS).read_text(encoding="utf-8"))
    if (run_dir / CONFIG).exists():
        records.config = json.loads((run_dir / CONFIG).read_text(encoding="utf-8"))
    return records
