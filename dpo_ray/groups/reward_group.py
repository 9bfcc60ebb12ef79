"""The reward group: replicas of a reward model, or workers running a rule function; (prompt, response) pairs are
sharded across them and every score is checked."""
from __future__ import annotations

from typing import List, Sequence

from ..config import RunConfig
from ..data.formats import Text
from ..workers.device import device_spec, rank_env
from ..workers.reward import check_rewards
from .actor_group import ActorGroup


def reward_source(cfg: RunConfig, default_fn: str = "") -> str:
    """The rule's import path or the model directory this run scores with."""
    source = cfg.reward.fn or cfg.reward.model_path or default_fn
    if not source:
        raise ValueError("online runs need a reward: reward.fn=module:function (a rule) or reward.model_path=DIR (a model)")
    return source


class RewardGroup:
    def __init__(self, cfg: RunConfig, default_fn: str = ""):
        c, r = cfg.cluster, cfg.reward
        self.name = reward_source(cfg, default_fn)
        if r.fn or not r.model_path:
            worker, kwargs = "dpo_ray.workers.reward.RuleRewardWorker", dict(fn=self.name)
        else:
            worker = "dpo_ray.workers.reward.ModelRewardWorker"
            kwargs = dict(model_path=r.model_path, micro_batch_size=r.micro_batch_size, max_length=r.max_length,
                          trust_remote_code=cfg.model.trust_remote_code, gpus=c.gpus_per_rank)
        gpus = kwargs.get("gpus", 0.0)
        env = rank_env(device_spec(gpus), 1)
        self.group = ActorGroup("reward", worker, c.reward_ranks, cpus=c.reward_cpus, gpus=gpus, strategy=c.placement,
                                env=env, init_kwargs=kwargs, call_timeout_s=c.call_timeout_s)

    def score(self, prompts: Sequence[Text], responses: Sequence[Sequence[str]]) -> List[List[float]]:
        """One score per response of each prompt, shaped like responses."""
        flat = [(p, r) for p, outs in zip(prompts, responses, strict=True) for r in outs]
        scores = self.group.run_shards("score", flat)
        scores = check_rewards(self.name, scores, len(flat))
        shaped, i = [], 0
        for outs in responses:
            shaped.append(scores[i:i + len(outs)])
            i += len(outs)
        return shaped

    def shutdown(self) -> None:
        self.group.shutdown()
