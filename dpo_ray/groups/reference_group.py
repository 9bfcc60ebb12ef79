"""The reference group: M replicas of the frozen reference, scoring micro-batches dealt to them in turn."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import RunConfig
from ..data.batches import as_micro_batches, deal_groups, scores_by_pair
from ..data.tokenize import TokenizedPair
from .actor_group import ActorGroup
from .resources import reference_need


class ReferenceGroup:
    def __init__(self, cfg: RunConfig, model_path: str, env: dict[str, str]):
        worker, kwargs = "dpo_ray.workers.reference.ReferenceWorker", dict(cfg=cfg, model_path=model_path)
        self.group = ActorGroup(reference_need(cfg), worker, cfg.cluster, env, kwargs)

    def logps(self, pairs: Sequence[TokenizedPair], groups: list[list[int]]) -> tuple[list[float], list[float]]:
        """(chosen, rejected) of every pair, each scored in its micro-batch of groups (dealt to the ranks in turn)."""
        index_plan = deal_groups(groups, self.group.size)
        per_rank = self.group.run_each("logps", [(rank,) for rank in as_micro_batches(pairs, index_plan)])
        return scores_by_pair(index_plan, per_rank, len(pairs))

    def shutdown(self) -> None:
        self.group.shutdown()
