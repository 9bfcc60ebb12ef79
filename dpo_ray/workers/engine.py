"""DeepSpeed engine construction shared by the policy and the (sharded) reference: config, optimizer, schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..config import TrainConfig
from .device import DeviceSpec


def deepspeed_config(
    spec: DeviceSpec, world: int, micro_batch_size: int, accumulation: int, max_grad_norm: float, zero_stage: int = 3
) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro_batch_size * accumulation * world,
        # DeepSpeed clips at 1.0 unless told otherwise: always say it.
        "gradient_clipping": max_grad_norm,
        "zero_optimization": {"stage": zero_stage, "stage3_gather_16bit_weights_on_model_save": True},
        "bf16": {"enabled": spec.dtype == torch.bfloat16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def lr_factor(step: int, total_steps: int, warmup_ratio: float, kind: str, warmup_steps: int = -1) -> float:
    """Learning-rate multiplier at a 0-based step: linear warmup, then cosine, linear or constant."""
    warmup = warmup_steps if warmup_steps >= 0 else math.ceil(warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total_steps - warmup)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "constant":
        return 1.0
    raise ValueError(f"train.lr_scheduler must be cosine, linear or constant, got {kind!r}")


def make_optimizer(params, train: TrainConfig) -> torch.optim.Optimizer:
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, betas=tuple(train.adam_betas), weight_decay=train.weight_decay)
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, weight_decay=train.weight_decay)
    raise ValueError(f"train.optimizer must be adamw or sgd, got {train.optimizer!r}")


def scheduler_factory(train: TrainConfig, total_steps: int) -> Callable[[torch.optim.Optimizer], Any]:
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, train.warmup_ratio, train.lr_scheduler, train.warmup_steps)
    )


def initialize(
    model: torch.nn.Module,
    config: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Callable | None = None,
):
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine
