"""The reward group: replicas of a reward model, or workers running a rule function; (prompt, response) pairs are
sharded across them and every score is checked."""

from __future__ import annotations

from collections.abc import Sequence

from ..data.formats import Text
from ..reward_source import RewardSource
from ..schema import RunConfig
from ..sizing.resources import reward_need
from ..workers.device import device_spec, rank_env
from .actor_group import ActorGroup


class RewardGroup:
    def __init__(self, cfg: RunConfig, source: RewardSource, placement=None):
        """source: the run's reward, resolved (a reward model's directory, or the rule it scores with)."""
        r, need = cfg.reward, reward_need(cfg)
        if source.reward_model:
            worker = "dpo_ray.workers.reward.ModelRewardWorker"
            kwargs = dict(
                model_path=source.reward_model,
                micro_batch_size=r.micro_batch_size,
                max_length=r.max_length,
                trust_remote_code=cfg.model.trust_remote_code,
                gpus=need.gpus,
                dtype=str(cfg.model.dtype),
            )
        else:
            worker, kwargs = "dpo_ray.workers.reward.RuleRewardWorker", dict(fn=source.rule, timeout_s=r.timeout_s)
        self.group = ActorGroup(
            need, worker, cfg.cluster, rank_env(device_spec(need.gpus), 1), kwargs, placement=placement
        )

    def score(self, prompts: Sequence[Text], responses: Sequence[Sequence[str]]) -> list[list[float]]:
        """One score per response of each prompt, shaped like responses."""
        flat = [(p, r) for p, outs in zip(prompts, responses, strict=True) for r in outs]
        scores = self.group.run_shards("score", flat)  # each worker checked its shard: one finite number per response
        shaped, i = [], 0
        for outs in responses:
            shaped.append(scores[i : i + len(outs)])
            i += len(outs)
        return shaped

    def shutdown(self) -> None:
        self.group.shutdown()
