"""Weight sync: policy rank 0 streams its weights into every engine worker over a process group of their own.

The driver brokers the rendezvous once (rank 0's node and a free port); each sync then hands out only the manifest
(names, dtypes, shapes), while the policy ranks gather a bucket at a time and rank 0 broadcasts it. Nothing crosses
the object store or vLLM's RPC but the manifest, and no host holds more than a few buckets and a layer extra.
"""

from __future__ import annotations

from ..schema import RunConfig
from .actor_group import gather
from .policy_group import PolicyGroup
from .rollout_group import RolloutGroup


class WeightSync:
    def __init__(self, cfg: RunConfig, policy: PolicyGroup, rollout: RolloutGroup):
        """Every engine worker and policy rank 0 join one group (all at once: joining blocks until all are in)."""
        self.policy, self.rollout = policy, rollout
        self.bucket_bytes = cfg.rollout.sync_bucket_mb << 20
        self.timeout_s = cfg.cluster.call_timeout_s
        world_size = 1 + rollout.group.size * rollout.workers_per_engine
        address, port = policy.weight_group_address()
        refs = policy.join_weight_group(address, port, world_size, self.timeout_s)
        refs += rollout.join_weight_group(address, port, 1, world_size)
        gather(refs, self.timeout_s, "weight-sync group start")

    def __call__(self) -> int:
        """One sync of the policy's current weights into every engine; returns the bytes rank 0 sent."""
        specs, adapter_config = self.policy.weight_manifest()
        sending = self.policy.send_weights(self.bucket_bytes)
        receiving = self.rollout.receive_weights(specs, self.bucket_bytes, adapter_config)
        return gather(sending + receiving, self.timeout_s, "weight sync")[0]
