"""The reference group: M replicas of the frozen reference, each scoring a contiguous shard of the pairs."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from ..config import RunConfig
from ..data.tokenize import TokenizedPair
from .actor_group import ActorGroup


class ReferenceGroup:
    def __init__(self, cfg: RunConfig, model_path: str, env: Dict[str, str]):
        c = cfg.cluster
        self.group = ActorGroup("reference", "dpo_ray.workers.reference.ReferenceWorker", c.reference_ranks,
                                cpus=c.cpus_per_rank, gpus=c.gpus_per_rank, strategy=c.placement, env=env,
                                init_kwargs=dict(cfg=cfg, model_path=model_path))

    def logps(self, pairs: Sequence[TokenizedPair]) -> Tuple[List[float], List[float]]:
        n = self.group.size
        bounds = [round(i * len(pairs) / n) for i in range(n + 1)]
        shards = [(list(pairs[bounds[i]:bounds[i + 1]]),) for i in range(n)]
        chosen, rejected = [], []
        for c, r in self.group.run_each("logps", shards):
            chosen += c
            rejected += r
        return chosen, rejected

    def shutdown(self) -> None:
        self.group.shutdown()
