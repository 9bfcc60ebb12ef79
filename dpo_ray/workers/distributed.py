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

    import torch.distributed as dist

    from .deepspeed_setup import import_deepspeed

    deepspeed = import_deepspeed()

    # DeepSpeed still calls torch's renamed collectives; one warning per step is noise, not news.
    warnings.filterwarnings(
        "ignore", message=r".*is deprecated\. Please use `torch\.distributed", category=FutureWarning
    )

    if dist.is_initialized():
        return
    if backend == "gloo":
        # The CPU shared-memory all-reduce op serves only tensor-parallel inference; skipping it saves a JIT build.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    timeout = timedelta(seconds=timeout_s)
    store = rendezvous_store(address, port, rank, world_size, timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timeout, verbose=False)


def rendezvous_store(address: str, port: int, rank: int, world_size: int, timeout: timedelta):
    """A process group's TCPStore, served by rank 0 on address alone: given only a host, torch's server listens on
    every interface (a local run would expose it beyond 127.0.0.1), so rank 0 binds the socket and hands it over."""
    import torch.distributed as dist

    if rank != 0:
        return dist.TCPStore(address, port, world_size, is_master=False, timeout=timeout)
    listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(128)
    return dist.TCPStore(address, port, world_size, is_master=True, timeout=timeout, master_listen_fd=listener.detach())


class BroadcastGroup:
    """A group of its own between one sender (rank 0, which hosts the rendezvous) and its receivers, outside any
    default group: policy rank 0 and vLLM's workers each already belong to one. On GPU built as vLLM's own weight
    transfer and OpenRLHF build theirs: vLLM's StatelessProcessGroup over this rendezvous store with vLLM's
    PyNcclCommunicator; on CPU a gloo group over the same store, behind the same broadcast."""

    def __init__(self, address: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float = 1800):
        import torch.distributed as dist

        timeout = timedelta(seconds=timeout_s)
        store = rendezvous_store(address, port, rank, world_size, timeout)
        self.rank, self.world_size = rank, world_size
        self.nccl, self.group = None, None
        if backend == "nccl":
            from vllm.distributed.utils import StatelessProcessGroup

            self.nccl = nccl_communicator(StatelessProcessGroup(rank=rank, world_size=world_size, store=store))
        else:
            self.group = dist.ProcessGroupGloo(store, rank, world_size, timeout)

    def broadcast(self, tensor) -> None:
        """tensor, from rank 0 into every rank's tensor of the same size, in place."""
        if self.nccl is not None:
            self.nccl.broadcast(tensor, src=0)
            return
        import torch.distributed as dist

        options = dist.BroadcastOptions()
        options.rootRank = 0
        self.group.broadcast([tensor], options).wait()


def nccl_communicator(group):
    """vLLM's PyNcclCommunicator on this process's current CUDA device. It quietly disables itself where it cannot
    load NCCL, and a disabled one's broadcast does nothing: the engines would keep their old weights, so say so."""
    import torch
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator

    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    communicator = PyNcclCommunicator(group, device=device)
    if group.world_size > 1 and communicator.disabled:
        raise RuntimeError(
            f"the weight-sync group (rank {group.rank} of {group.world_size}) cannot use NCCL here: vLLM's "
            "PyNcclCommunicator found no NCCL library or no GPU (VLLM_DISABLE_PYNCCL set?)"
        )
    return communicator
