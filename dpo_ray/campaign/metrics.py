"""Metrics to JSONL in the run directory and to the run's trackers (report_to: TensorBoard, W&B, MLflow)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from ..atomic import write_text
from ..report.trackers import Trackers
from ..run_files import METRICS
from ..schema import RunConfig


def kept_rows(path: Path, last_step: int) -> str:
    """The metrics rows a run resumed after last_step keeps: those up to it (the rest it writes again), whole lines only
    (a line cut by a crash goes)."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= last_step:
            kept.append(line + "\n")
    return "".join(kept)


class MetricsWriter:
    def __init__(self, run_dir: Path, cfg: RunConfig, resumed_step: int | None = None):
        """resumed_step: a run resumed after that step keeps its rows up to it (a row is never there twice) and reports
        into the same tracker runs; None starts the metrics afresh."""
        if resumed_step is not None:
            write_text(run_dir / METRICS, kept_rows(run_dir / METRICS, resumed_step))
        self.jsonl = (run_dir / METRICS).open("w" if resumed_step is None else "a", encoding="utf-8")
        self.trackers = Trackers(run_dir, cfg.report_to, cfg.run_name, asdict(cfg), resume=resumed_step is not None)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        self.jsonl.write(
            json.dumps({"step": step, **{k: (v if math.isfinite(v) else None) for k, v in metrics.items()}}) + "\n"
        )
        self.jsonl.flush()
        self.trackers.log(step, metrics)

    def close(self) -> None:
        self.jsonl.close()
        self.trackers.close()
