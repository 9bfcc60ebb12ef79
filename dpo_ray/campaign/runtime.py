"""Starting or joining Ray for a campaign."""
from __future__ import annotations

import os

import ray

from ..config import ClusterConfig


def ensure_ray(cluster: ClusterConfig, cpus_needed: float) -> bool:
    """Join cluster.address, or start a local Ray sized for the groups; returns True if this call started it."""
    if ray.is_initialized():
        return False
    if cluster.address:
        ray.init(address=cluster.address, log_to_driver=True)
        return True
    # Groups alternate phases, so a local run may reserve more CPUs than the machine has.
    cpus = max(os.cpu_count() or 1, int(-(-cpus_needed // 1)))
    ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=1 << 30, log_to_driver=True)
    return True
