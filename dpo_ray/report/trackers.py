"""Experiment trackers a run reports to (report_to, TRL's names): TensorBoard in the run directory, Weights & Biases
(WANDB_MODE=offline honoured) and MLflow (a file store in the run directory unless MLFLOW_TRACKING_URI names another).
Each gets the run name, the composed config, every metrics row by step and, at the end, the report's plots.

A resumed run reports into the same tracker runs: their ids are kept in the run directory."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from ..atomic import write_text

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name -> the module it needs
EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny"}  # name -> what pip installs
NONE = "none"
IDS = "tracker_runs.json"  # the W&B and MLflow run ids of this run directory
PROJECT = "dpo-ray"  # W&B project and MLflow experiment unless WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME say otherwise


def report_names(report_to) -> list[str]:
    """report_to as names: 'wandb', 'wandb,mlflow' or [wandb, mlflow]; none (alone) reports to no tracker."""
    joined = ",".join(str(n) for n in report_to) if isinstance(report_to, (list, tuple)) else str(report_to)
    names = [n.strip() for n in joined.split(",") if n.strip()]
    return [] if names == [NONE] else names


def report_problems(report_to) -> list[str]:
    """What is wrong with report_to: unknown names, none beside others, a tracker whose package is missing."""
    names, allowed = report_names(report_to), [*TRACKERS, NONE]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        return [f"report_to={names}: unknown tracker {unknown[0]!r} (allowed: {', '.join(allowed)})"]
    if NONE in names:
        return [f"report_to={names}: none means no tracker; it cannot be given with others"]
    missing = [n for n in names if importlib.util.find_spec(TRACKERS[n]) is None]
    return [
        f"report_to={names}: {n} needs its package, which is not installed: pip install {EXTRAS[n]} "
        f"(or the extra: pip install 'dpo-ray[{n}]')"
        for n in missing
    ]


def flat_config(config: Mapping, prefix: str = "") -> dict[str, str]:
    """A nested config as dotted option names and their values as text (MLflow's parameters)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return flat


class TensorBoard:
    def __init__(self, run_dir: Path, run_name: str, config: dict, ids: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.writer.add_text("config", f"```\n{json.dumps(config, indent=2)}\n```")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def images(self, plots: dict[str, Path], step: int) -> None:
        from matplotlib.image import imread

        for name, path in plots.items():
            self.writer.add_image(f"report/{name}", imread(path)[..., :3], step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, run_dir: Path, run_name: str, config: dict, ids: dict):
        import wandb

        ids.setdefault("wandb", uuid.uuid4().hex[:16])
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", PROJECT),
            name=run_name,
            id=ids["wandb"],
            resume="allow",
            dir=str(run_dir),
            config=config,
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def images(self, plots: dict[str, Path], step: int) -> None:
        import wandb

        # W&B drops rows below a resumed run's current step: the images take the next one
        self.run.log({f"report/{name}": wandb.Image(str(path)) for name, path in plots.items()})

    def close(self) -> None:
        self.run.finish()


class MLflow:
    def __init__(self, run_dir: Path, run_name: str, config: dict, ids: dict):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # MLflow keeps its file store only on request; a run directory is where this run's files go
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir / "mlruns").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        if "mlflow" not in ids:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            ids["mlflow"] = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            params = [Param(k, v[:6000]) for k, v in flat_config(config).items()]
            for lo in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
                self.client.log_batch(ids["mlflow"], params=params[lo : lo + 100])
            self.client.log_dict(ids["mlflow"], config, "config.json")
        self.run_id = ids["mlflow"]

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(v)]
        for lo in range(0, len(rows), 1000):  # MLflow takes at most 1000 metrics a call
            self.client.log_batch(self.run_id, metrics=rows[lo : lo + 1000])

    def images(self, plots: dict[str, Path], step: int) -> None:
        for path in plots.values():
            self.client.log_artifact(self.run_id, str(path), "report")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


KINDS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


class Trackers:
    """Every tracker of report_to, opened on the run directory (a new tracker run unless resuming)."""

    def __init__(self, run_dir: Path, report_to, run_name: str, config: dict, resume: bool):
        ids_file = run_dir / IDS
        ids = json.loads(ids_file.read_text()) if resume and ids_file.exists() else {}
        name = run_name or run_dir.resolve().name
        self.trackers = [KINDS[n](run_dir, name, config, ids) for n in report_names(report_to)]
        write_text(ids_file, json.dumps(ids))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for tracker in self.trackers:
            tracker.log(step, metrics)

    def images(self, plots: dict[str, Path], step: int) -> None:
        for tracker in self.trackers:
            tracker.images(plots, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
