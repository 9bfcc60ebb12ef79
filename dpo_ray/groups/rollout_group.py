"""The rollout group: K vLLM engines; prompts are sharded across them and weights are pushed into all of them."""

from __future__ import annotations

from collections.abc import Sequence

import ray

from ..config import RunConfig
from ..data.formats import Text
from ..workers.rollout import Sample, engine_env
from .actor_group import ActorGroup
from .resources import rollout_need


class RolloutGroup:
    def __init__(self, cfg: RunConfig, model_path: str):
        need = rollout_need(cfg)
        kwargs = dict(
            model_path=model_path, cfg=cfg.rollout, policy_dtype=cfg.model.dtype, gpus=need.gpus, seed=cfg.online.seed
        )
        self.group = ActorGroup(
            need, "dpo_ray.workers.rollout.RolloutWorker", cfg.cluster, engine_env(need.gpus), kwargs
        )

    def generate(
        self,
        prompts: Sequence[Text],
        seeds: Sequence[int],
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        with_logp: bool = False,
    ) -> list[list[Sample]]:
        """n samples for each prompt, in prompt order (with their log-probs if with_logp)."""
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        return self.group.run_shards(
            "generate", list(zip(prompts, seeds)), n, temperature, top_p, max_tokens, with_logp
        )

    def load_weights(self, weights: ray.ObjectRef) -> None:
        """Every engine loads the same safetensors blob; Ray hands each the object, the driver never copies it."""
        self.group.run("load_weights", weights)

    def shutdown(self) -> None:
        self.group.shutdown()
