"""A run directory belongs to one run: what determines a run's result (model, data, loss, schedule, seeds) is
fingerprinted into every checkpoint, and resuming into a directory whose checkpoint says otherwise stops, naming what
differs, before anything starts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict

from ..data.tokenize import TokenizedPair
from ..schema import AlgoConfig, OnlineConfig, RunConfig, TrainConfig
from ..workers.models import model_fingerprint
from .failures import RunMismatch


def items_digest(items: Iterable) -> str:
    """SHA-256 (16 hex digits) of the items as JSON: tokenised pairs, prompts."""
    digest = hashlib.sha256()
    for item in items:
        if isinstance(item, TokenizedPair):
            item = [item.prompt_ids, item.chosen_ids, item.rejected_ids, item.label]
        digest.update(json.dumps(item).encode())
    return digest.hexdigest()[:16]


def run_fingerprint(cfg: RunConfig, model_path: str, reference_path: str, data: str, total_steps: int) -> dict:
    """What a run's result depends on, readable where it is small: the loss options, the schedule (with the total
    steps only where the learning rate depends on them), the seeds; digests of the models and the data."""
    t = cfg.train
    schedule = schedule_fingerprint(t)
    if str(t.lr_scheduler) != "constant" or 0 < t.warmup_steps < 1:
        schedule["total_steps"] = total_steps
    return {
        "model": model_fingerprint(model_path)[:16],
        "reference": model_fingerprint(reference_path)[:16],
        "data": data,
        "algo": algo_fingerprint(cfg.algo),
        "schedule": schedule,
        "seeds": seeds_fingerprint(cfg),
    }


def schedule_fingerprint(t: TrainConfig) -> dict:
    """The optimizer and learning-rate schedule options, as JSON values."""
    schedule = {
        "optimizer": str(t.optimizer),
        "lr": t.lr,
        "lr_scheduler": str(t.lr_scheduler),
        "lr_scheduler_kwargs": dict(t.lr_scheduler_kwargs),
        "warmup_steps": t.warmup_steps,
        "weight_decay": t.weight_decay,
        "adam_betas": list(t.adam_betas),
        "max_grad_norm": t.max_grad_norm,
        "batch_size": t.batch_size,
    }
    return json.loads(json.dumps(schedule, default=str))


def seeds_fingerprint(cfg: RunConfig) -> dict:
    """The seeds of initialisation, dropout and sampling (train.seed), and of the data order and eval split."""
    return {"train.seed": cfg.train.seed, "data.shuffle_seed": cfg.data.shuffle_seed}


def algo_fingerprint(algo: AlgoConfig) -> dict:
    """Every loss option, as JSON values."""
    return json.loads(json.dumps(asdict(algo), default=str))


def online_fingerprint(online: OnlineConfig) -> dict:
    """The online options that shape a campaign's result, as JSON values: all but how many rounds it runs and how often
    it evaluates and checkpoints (more rounds, other evaluations or checkpoints continue the same campaign)."""
    same = ("rounds", "eval_every", "eval_samples_per_prompt", "checkpoint_every")
    return json.loads(json.dumps({k: v for k, v in asdict(online).items() if k not in same}, default=str))


def differences(saved: dict, current: dict) -> list[str]:
    """'name: saved -> current' for each part that differs. An option the saved run predates is no difference while
    this run leaves it at its default (a new option's default keeps the earlier behaviour): a campaign begun before an
    upgrade resumes after it."""
    cfg = RunConfig()
    defaults = {
        "algo": algo_fingerprint(cfg.algo),
        "online": online_fingerprint(cfg.online),
        "schedule": schedule_fingerprint(cfg.train),
        "seeds": seeds_fingerprint(cfg),
    }
    return _differences(saved, current, defaults, "")


def _differences(saved: dict, current: dict, defaults: dict, prefix: str) -> list[str]:
    found = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += _differences(old, new, defaults.get(key) or {}, f"{prefix}{key}.")
        elif key not in saved and key in defaults and new == defaults[key]:
            continue  # an option added since the saved run began, left at its default
        elif old != new:
            found.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return found


def check_resumable(state: dict | None, current: dict, run_dir: str) -> None:
    """Raise RunMismatch when the checkpoint a run would resume from was made by a run that differs from this one."""
    saved = (state or {}).get("fingerprint")
    if saved is None:
        return
    changed = differences(saved, current)
    if changed:
        raise RunMismatch(
            f"output_dir={run_dir} holds another run's checkpoint ({state['tag']}), which this run differs from: "
            f"{'; '.join(changed[:8])}. Give a new output_dir, or resume=never to start over there (its metrics and "
            "events are cleared)"
        )
