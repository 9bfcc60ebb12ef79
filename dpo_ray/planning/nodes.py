"""The nodes a plan is made for: a cluster described by flags, the live Ray cluster, or this machine."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

GIB = 1 << 30


@dataclass(frozen=True)
class NodeSpec:
    name: str
    cpus: float
    gpus: int
    memory: float  # host memory, bytes
    gpu_memory: float | None  # bytes per GPU (None: unknown)
    node_id: str = ""  # the Ray node id of a live node

    def resources(self) -> dict[str, float]:
        return {"CPU": self.cpus, "GPU": float(self.gpus)}


def described_nodes(nodes: int, gpus: int, gpu_memory_gib: float, cpus: float, memory_gib: float) -> list[NodeSpec]:
    """nodes identical nodes, as `dpo-ray plan --nodes ...` describes them."""
    gpu_memory = gpu_memory_gib * GIB if gpus else None
    return [NodeSpec(f"node{i}", cpus, gpus, memory_gib * GIB, gpu_memory) for i in range(nodes)]


def gpu_memory_here() -> tuple[int, float | None]:
    """This machine's GPUs and the smallest one's memory, from nvidia-smi (no CUDA context); (0, None) without."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return 0, None
    mib = [float(x) for x in out if x.replace(".", "").isdigit()]
    return len(mib), (min(mib) * (1 << 20) if mib else None)


def memory_here() -> tuple[float, float | None]:
    """This machine's memory, as a CPU rank measures it (workers/device.device_memory), and its GPUs' (or None)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), gpu_memory_here()[1]


def this_machine(cpus: float) -> list[NodeSpec]:
    """This machine as a local Ray would see it, with cpus CPUs (a local run may reserve more than it has)."""
    gpus, gpu_memory = gpu_memory_here()
    return [NodeSpec("this machine", cpus, gpus, memory_here()[0], gpu_memory)]


def ray_nodes() -> list[NodeSpec]:
    """The alive nodes of the Ray cluster this process has joined: their resources, and their memory and GPU memory
    asked on each (a task that takes no resources, so busy nodes do not delay it)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    alive = [n for n in ray.nodes() if n["Alive"]]
    probe = ray.remote(num_cpus=0)(memory_here)
    asked = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
        for n in alive
    ]
    specs = []
    for n, (memory, gpu_memory) in zip(alive, ray.get(asked, timeout=120)):
        r = n["Resources"]
        name = f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})"
        specs.append(NodeSpec(name, r.get("CPU", 0.0), int(r.get("GPU", 0)), memory, gpu_memory, n["NodeID"]))
    return specs
