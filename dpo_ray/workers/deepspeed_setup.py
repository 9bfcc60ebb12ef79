"""DeepSpeed engines: the policy's at its ZeRO stage (config, optimizer, learning-rate schedule) and a zero3
reference's config."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..schema import DeepSpeedConfig, TrainConfig
from .device import DeviceSpec


def zero_section(spec: DeviceSpec, ds: DeepSpeedConfig, stage: int, optimizer: bool) -> dict[str, Any]:
    """The zero_optimization block: the stage, the run's bucket sizes (and stage 3's prefetch and persistence), and
    its offloads."""
    if stage == 0:
        return {"stage": 0}
    section: dict[str, Any] = {"stage": stage, "reduce_bucket_size": ds.reduce_bucket_size}
    if stage >= 2:  # reduce each gradient bucket while the backward goes on (DeepSpeed leaves it off at stage 2)
        section["overlap_comm"] = True
    if stage == 3:
        section.update(
            stage3_gather_16bit_weights_on_model_save=True,
            stage3_prefetch_bucket_size=ds.prefetch_bucket_size,
            stage3_param_persistence_threshold=ds.param_persistence_threshold,
            stage3_max_live_parameters=ds.max_live_parameters,
        )
    offloads = {"offload_param": ds.offload_param, **({"offload_optimizer": ds.offload_optimizer} if optimizer else {})}
    for key, device in offloads.items():
        if device != "none":
            # Pinned host memory speeds the device's copies; there is none to pin without CUDA.
            section[key] = {"device": str(device), "pin_memory": spec.kind == "cuda"}
            if device == "nvme":
                section[key]["nvme_path"] = ds.nvme_path
    return section


def deepspeed_config(
    spec: DeviceSpec,
    world: int,
    micro_batch_size: int,
    accumulation: int,
    max_grad_norm: float,
    ds: DeepSpeedConfig,
    stage: int = 3,
) -> dict[str, Any]:
    """The policy's training engine at a ZeRO stage (at stage 0 the optimizer clips: see clip_before_step)."""
    config = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro_batch_size * accumulation * world,
        # DeepSpeed clips at 1.0 unless told otherwise: always say it.
        "gradient_clipping": max_grad_norm if stage else 0.0,
        "zero_optimization": zero_section(spec, ds, stage, optimizer=True),
        # immediate_grad_update: BF16_Optimizer (bf16 at stage 1) otherwise adds the low-precision gradients, which
        # keep accumulating over the micro-batches, into its fp32 ones after every micro-batch (g1 + (g1 + g2) + ...)
        "bf16": {"enabled": spec.dtype == torch.bfloat16, "immediate_grad_update": True},
        "data_types": {"grad_accum_dtype": "fp32" if ds.grad_accum_dtype == "fp32" else _dtype_name(spec.dtype)},
        "zero_allow_untested_optimizer": True,
        # Offloaded optimizer states take the torch optimizer dpo-ray builds (DeepSpeed would insist on its own).
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if ds.reduce_dtype == "fp32":
        config["communication_data_type"] = "fp32"
    return config


def inference_config(spec: DeviceSpec, world: int, ds: DeepSpeedConfig) -> dict[str, Any]:
    """A frozen model partitioned over the ranks (a zero3 reference): ZeRO-3 without an optimizer."""
    return {
        "train_micro_batch_size_per_gpu": 1,
        "train_batch_size": world,
        "zero_optimization": zero_section(spec, ds, 3, optimizer=False),
        "bf16": {"enabled": spec.dtype == torch.bfloat16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


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


def make_optimizer(params, train: TrainConfig, offloaded: bool, cache_dir: str) -> torch.optim.Optimizer:
    """The torch optimizer; with offloaded optimizer states, AdamW is DeepSpeed's CPU Adam (the same update,
    vectorised for the host; its C++ op builds once per kind of CPU, about 75 s on 2 cores: extensions_dir)."""
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, weight_decay=train.weight_decay)
    if offloaded:
        import os

        from deepspeed.ops.adam import DeepSpeedCPUAdam

        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir(cache_dir)))
        return DeepSpeedCPUAdam(
            params, lr=train.lr, betas=tuple(train.adam_betas), weight_decay=train.weight_decay, adamw_mode=True
        )
    # fused: one kernel over all tensors (on CPU 4x torch's default per-tensor loop for a 24M model; the same update)
    return torch.optim.AdamW(
        params, lr=train.lr, betas=tuple(train.adam_betas), weight_decay=train.weight_decay, fused=True
    )


def extensions_dir(cache_dir: str, cpuinfo: str = "/proc/cpuinfo") -> Path:
    """Where DeepSpeed's C++ ops build: cache_dir/torch_extensions/<this CPU's model and flags>. DeepSpeed compiles
    CPU Adam with -march=native, so nodes of one kind of CPU share one build (torch locks its build directory: the
    first rank builds, the others wait) and a node of another kind never loads it (illegal instructions)."""
    import hashlib
    import platform

    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        lines = []
    kind = [platform.machine()] + sorted({line for line in lines if line.startswith(("model name", "flags"))})
    key = hashlib.sha256("\n".join(kind).encode()).hexdigest()[:12]
    return Path(cache_dir).expanduser() / "torch_extensions" / f"{platform.machine()}-{key}"


def clip_before_step(optimizer: torch.optim.Optimizer, max_grad_norm: float) -> None:
    """Stage 0: clip the (already averaged) gradients before each step and leave their norm where DeepSpeed reads
    it, since its plain data-parallel path clips without keeping the norm (and skips it when not clipping)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def clip(opt, args, kwargs):
        opt._global_grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm or math.inf))

    optimizer.register_step_pre_hook(clip)


OWN_SCHEDULES = ("cosine", "linear", "constant")  # lr_factor's; every other train.lr_scheduler is transformers'


def scheduler_factory(train: TrainConfig, total_steps: int) -> Callable[[torch.optim.Optimizer], Any]:
    kind = str(train.lr_scheduler)
    if kind in OWN_SCHEDULES:
        return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total_steps, train.warmup_steps, kind)
        )
    from transformers import get_scheduler

    return lambda optimizer: get_scheduler(
        kind,
        optimizer,
        num_warmup_steps=warmup_length(train.warmup_steps, total_steps),
        num_training_steps=total_steps,
        scheduler_specific_kwargs=dict(train.lr_scheduler_kwargs),
    )


def import_deepspeed():
    """The deepspeed module, imported without mlflow: DeepSpeed's autotuner imports mlflow when it is installed, only
    to report autotuning runs (never run here), which costs each rank ~1 s of its start."""
    if "deepspeed" in sys.modules or "mlflow" in sys.modules:
        import deepspeed

        return deepspeed
    sys.modules["mlflow"] = None  # type: ignore[assignment]  # makes `import mlflow` raise ImportError
    try:
        import deepspeed
    finally:
        del sys.modules["mlflow"]
    return deepspeed


def initialize(
    model: torch.nn.Module,
    config: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Callable | None = None,
):
    deepspeed = import_deepspeed()
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine
