"""reference.sharding=auto's choice: full replicas of the reference on each rank, or one model partitioned over them."""

from __future__ import annotations

AUTO_ZERO3_SHARE = 0.5  # reference.sharding=auto partitions the model once a replica would fill this share of a device


def reference_sharding(setting: str, ranks: int, replica_bytes: float, device_bytes: float) -> str:
    """reference.sharding, or for auto: zero3 when there are ranks to share a replica that would fill more than
    AUTO_ZERO3_SHARE of the smallest device, else replicas."""
    if setting != "auto":
        return setting
    return "zero3" if ranks > 1 and replica_bytes > AUTO_ZERO3_SHARE * device_bytes else "replicas"
