"""Process-group start-up for one rank: rank 0's address and a free port, then DeepSpeed's init."""

from __future__ import annotations

import os
import socket
from datetime import timedelta


def node_address() -> str:
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def init_distributed(
    rank: int, world_size: int, address: str, port: int, backend: str, timeout_s: int = 1800, local_rank: int = 0
) -> None:
    os.environ.update(
        MASTER_ADDR=address,
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(local_rank),  # DeepSpeed selects the CUDA device by it
        LOCAL_WORLD_SIZE="1",
    )
    import warnings

    import deepspeed
    import torch.distributed as dist

    # DeepSpeed still calls torch's renamed collectives; one warning per step is noise, not news.
    warnings.filterwarnings(
        "ignore", message=r".*is deprecated\. Please use `torch\.distributed", category=FutureWarning
    )

    if dist.is_initialized():
        return
    if backend == "gloo":
        # The CPU shared-memory all-reduce op serves only tensor-parallel inference; skipping it saves a JIT build.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(
        dist_backend=backend,
        auto_mpi_discovery=False,
        init_method=f"tcp://{address}:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
        verbose=False,
    )
