"""The one place that chooses device, collective backend, dtype and the environment a rank needs."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..schema import ClusterConfig


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


def device_memory(spec: DeviceSpec, world: int) -> int:
    """Bytes of the memory a rank's model lives in: its GPU, or on CPU its node's memory shared by the group's
    ranks (as if all were on it)."""
    if spec.kind == "cuda":
        require_cuda()
        return torch.cuda.get_device_properties(spec.device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // world


def host_rss() -> int:
    """Bytes of this process's resident memory (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def host_peak_rss() -> int:
    """Bytes of this process's peak resident memory so far (Linux's VmHWM)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def rank_threads(cpus_per_rank: float, torch_threads: int = 0) -> int:
    """torch threads for one rank: cluster.torch_threads, else its CPU share rounded up."""
    return torch_threads or max(1, math.ceil(cpus_per_rank))


# Network and collective settings (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, GLOO_SOCKET_IFNAME, ...) and OpenMP's spin count
# (dpo_ray/__init__.py): Ray starts an actor with its node's environment, not the driver's; the driver hands these on.
PASSED_ON = ("NCCL_", "TORCH_NCCL_", "GLOO_", "UCX_", "FI_", "CUDA_DEVICE_MAX_CONNECTIONS", "GOMP_SPINCOUNT")


def passed_on(environ: Mapping[str, str] = os.environ, launch_dir: str = "") -> dict[str, str]:
    """The driver's variables every actor gets (PASSED_ON), and its PYTHONPATH with the directory it was launched
    from first (launch_dir, else the current one): a reward module beside the user imports in the actors too."""
    env = {k: v for k, v in environ.items() if k.startswith(PASSED_ON)}
    here = launch_dir or os.getcwd()
    paths = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != here]
    env["PYTHONPATH"] = os.pathsep.join([here, *paths])
    return env


def rank_env(spec: DeviceSpec, threads: int) -> dict[str, str]:
    """Environment for a worker process, set before it imports DeepSpeed."""
    env = {**passed_on(), "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    if spec.kind == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    return env


def local_gpu(environ: Mapping[str, str], ray_gpu_ids: list) -> int:
    """The CUDA device index of an actor's GPU. Ray sets CUDA_VISIBLE_DEVICES to the actor's own GPUs, so it is 0;
    with RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES set, every GPU of the node stays visible and the actor's is the
    first of ray.get_gpu_ids(), counted among CUDA_VISIBLE_DEVICES when the node has those set."""
    if not environ.get("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"):
        return 0
    gpu = str(ray_gpu_ids[0])
    visible = [d.strip() for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible.index(gpu) if visible else int(gpu)


def own_gpus_only(environ: Mapping[str, str], ray_gpu_ids: list) -> dict[str, str]:
    """What a multi-GPU process (a vLLM engine: its workers count GPUs from 0) must set to see only its actor's GPUs:
    nothing when Ray already narrowed CUDA_VISIBLE_DEVICES, else exactly Ray's ids for the actor."""
    if not environ.get("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES") or not ray_gpu_ids:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in ray_gpu_ids)}


def require_cuda() -> None:
    """Stop a GPU rank whose torch cannot use CUDA, naming its node and why, before it loads anything: a venv built on
    a GPU-less login node holds CPU torch, and a node's driver can be older than torch's CUDA."""
    if torch.version.cuda is not None and torch.cuda.is_available():
        return
    import socket

    where = f"node {socket.gethostname()}: torch {torch.__version__}"
    if torch.version.cuda is None:
        raise RuntimeError(
            f"{where} is a CPU build, but the run asks for GPUs (cluster.gpus_per_rank > 0): its environment was set "
            "up on a machine without a GPU; run scripts/setup.sh on a GPU node (it rebuilds .venv for CUDA)"
        )
    raise RuntimeError(
        f"{where} (CUDA {torch.version.cuda}) sees no usable GPU (CUDA_VISIBLE_DEVICES="
        f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): the NVIDIA driver may be older than CUDA "
        f"{torch.version.cuda} needs; nvidia-smi on that node says which driver it has"
    )


def use_local_gpu(spec: DeviceSpec) -> int:
    """In a GPU actor: make its own GPU the current CUDA device, and say which it is (for LOCAL_RANK)."""
    if spec.kind != "cuda":
        return 0
    require_cuda()
    try:
        import ray

        ids = ray.get_gpu_ids() if ray.is_initialized() else [0]
    except ImportError:  # a worker run in-process without Ray (bench/gpu_check.py on a bare GPU machine)
        ids = [0]
    index = local_gpu(os.environ, ids)
    torch.cuda.set_device(index)
    return index


def run_environment(cluster: ClusterConfig, dtype: str) -> tuple[DeviceSpec, dict[str, str]]:
    """The device of the policy and reference ranks, and the environment their processes start with."""
    spec = device_spec(cluster.gpus_per_rank, dtype)
    return spec, rank_env(spec, rank_threads(cluster.cpus_per_rank, cluster.torch_threads))
