"""Metrics to JSONL in the run directory and to the run's trackers (report_to: TensorBoard, W&B, MLflow)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from ..config import RunConfig
from ..report.trackers import Trackers
from ..run_files import METRICS


class MetricsWriter:
    def __init__(self, run_dir: Path, cfg: RunConfig, append: bool = False):
        """append: a resumed run, which adds to the metrics and reports into the same tracker runs."""
        self.jsonl = (run_dir / METRICS).open("a" if append else "w", encoding="utf-8")
        self.trackers = Trackers(run_dir, cfg.report_to, cfg.run_name, asdict(cfg), resume=append)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        self.jsonl.write(
            json.dumps({"step": step, **{k: (v if math.isfinite(v) else None) for k, v in metrics.items()}}) + "\n"
        )
        self.jsonl.flush()
        self.trackers.log(step, metrics)

    def close(self) -> None:
        self.jsonl.close()
        self.trackers.close()
