"""The one place that chooses device, collective backend, dtype and the environment a rank needs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DeviceSpec:
    kind: str  # "cpu" or "cuda"
    backend: str  # "gloo" or "nccl"
    dtype: torch.dtype

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.kind == "cuda" else torch.device("cpu")


def device_spec(gpus_per_rank: float, dtype: str = "auto") -> DeviceSpec:
    kind = "cuda" if gpus_per_rank > 0 else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if kind == "cuda" else "float32"
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"model.dtype must be float32, bfloat16 or auto, got {dtype!r}")
    return DeviceSpec(kind, "nccl" if kind == "cuda" else "gloo", getattr(torch, dtype))


def rank_threads(cpus_per_rank: float, torch_threads: int = 0) -> int:
    """torch threads for one rank: cluster.torch_threads, else its CPU share rounded up."""
    return torch_threads or max(1, math.ceil(cpus_per_rank))


def rank_env(spec: DeviceSpec, threads: int) -> dict[str, str]:
    """Environment for a worker process, set before it imports DeepSpeed."""
    env = {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    if spec.kind == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    return env
