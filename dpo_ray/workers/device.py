"""The one place that chooses device, collective backend, dtype and the environment a rank needs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import ClusterConfig


@dataclass(frozen=True)
class DeviceSpec:
    kind: str  # "cpu" or "cuda"
    backend: str  # "gloo" or "nccl"
    dtype: torch.dtype

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.kind == "cuda" else torch.device("cpu")


def device_spec(gpus_per_rank: float, dtype: str = "auto") -> DeviceSpec:
    """The device a rank with this many GPUs runs on; dtype 'auto' is bfloat16 on GPU and float32 on CPU."""
    kind = "cuda" if gpus_per_rank > 0 else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if kind == "cuda" else "float32"
    return DeviceSpec(kind, "nccl" if kind == "cuda" else "gloo", getattr(torch, str(dtype)))


def rank_threads(cpus_per_rank: float, torch_threads: int = 0) -> int:
    """torch threads for one rank: cluster.torch_threads, else its CPU share rounded up."""
    return torch_threads or max(1, math.ceil(cpus_per_rank))


def rank_env(spec: DeviceSpec, threads: int) -> dict[str, str]:
    """Environment for a worker process, set before it imports DeepSpeed."""
    env = {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    if spec.kind == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    return env


def run_environment(cluster: ClusterConfig, dtype: str) -> tuple[DeviceSpec, dict[str, str]]:
    """The device of the policy and reference ranks, and the environment their processes start with."""
    spec = device_spec(cluster.gpus_per_rank, dtype)
    return spec, rank_env(spec, rank_threads(cluster.cpus_per_rank, cluster.torch_threads))
