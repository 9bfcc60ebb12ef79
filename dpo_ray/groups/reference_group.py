"""The reference group: M replicas of the frozen reference, each scoring a contiguous shard of the pairs."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import RunConfig
from ..data.tokenize import TokenizedPair
from .actor_group import ActorGroup


class ReferenceGroup:
    def __init__(self, cfg: RunConfig, model_path: str, env: dict[str, str]):
        c = cfg.cluster
        self.group = ActorGroup(
            "reference",
            "dpo_ray.workers.reference.ReferenceWorker",
            c.reference_ranks,
            cpus=c.cpus_per_rank,
            gpus=c.gpus_per_rank,
            strategy=c.placement,
            env=env,
            call_timeout_s=c.call_timeout_s,
            init_kwargs=dict(cfg=cfg, model_path=model_path),
        )

    def logps(self, pairs: Sequence[TokenizedPair]) -> tuple[list[float], list[float]]:
        scored = self.group.run_shards("logps", pairs)
        return [c for c, _ in scored], [r for _, r in scored]

    def shutdown(self) -> None:
        self.group.shutdown()
