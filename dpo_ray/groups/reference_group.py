"""The reference group: M replicas of the frozen reference, each scoring a contiguous shard of the pairs."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import RunConfig
from ..data.tokenize import TokenizedPair
from .actor_group import ActorGroup
from .resources import reference_need


class ReferenceGroup:
    def __init__(self, cfg: RunConfig, model_path: str, env: dict[str, str]):
        worker, kwargs = "dpo_ray.workers.reference.ReferenceWorker", dict(cfg=cfg, model_path=model_path)
        self.group = ActorGroup(reference_need(cfg), worker, cfg.cluster, env, kwargs)

    def logps(self, pairs: Sequence[TokenizedPair]) -> tuple[list[float], list[float]]:
        scored = self.group.run_shards("logps", pairs)
        return [c for c, _ in scored], [r for _, r in scored]

    def shutdown(self) -> None:
        self.group.shutdown()
