"""Setting up a DeepSpeed ZeRO-3 training engine for the policy: its config, optimizer and learning-rate schedule."""

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


def warmup_length(warmup_steps: float, total_steps: int) -> int:
    """train.warmup_steps as steps: a whole number is itself, a value below 1 a share of all steps (transformers)."""
    return math.ceil(warmup_steps * total_steps) if warmup_steps < 1 else int(warmup_steps)


def lr_factor(step: int, total_steps: int, warmup_steps: float, kind: str) -> float:
    """Learning-rate multiplier at a 0-based step: linear warmup, then cosine, linear or constant decay."""
    warmup = warmup_length(warmup_steps, total_steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return {"cosine": 0.5 * (1.0 + math.cos(math.pi * progress)), "linear": 1.0 - progress, "constant": 1.0}[kind]


def make_optimizer(params, train: TrainConfig) -> torch.optim.Optimizer:
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.AdamW(params, lr=train.lr, betas=tuple(train.adam_betas), weight_decay=train.weight_decay)


def scheduler_factory(train: TrainConfig, total_steps: int) -> Callable[[torch.optim.Optimizer], Any]:
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, train.warmup_steps, str(train.lr_scheduler))
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
