"""Metrics to JSONL and TensorBoard in the run directory."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..run_files import METRICS


class MetricsWriter:
    def __init__(self, run_dir: Path, append: bool = False):
        from torch.utils.tensorboard import SummaryWriter

        self.jsonl = (run_dir / METRICS).open("a" if append else "w", encoding="utf-8")
        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        self.jsonl.write(
            json.dumps({"step": step, **{k: (v if math.isfinite(v) else None) for k, v in metrics.items()}}) + "\n"
        )
        self.jsonl.flush()
        for name, value in metrics.items():
            self.tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        self.jsonl.close()
        self.tensorboard.close()
