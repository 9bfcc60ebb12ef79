"""The rollout group: K vLLM engines; prompts are sharded across them and weights are pushed into all of them."""
from __future__ import annotations

from typing import List, Sequence

import ray

from ..config import RunConfig
from ..data.formats import Text
from ..workers.rollout import engine_env
from .actor_group import ActorGroup


class RolloutGroup:
    def __init__(self, cfg: RunConfig, model_path: str):
        c = cfg.cluster
        gpus = float(c.rollout_tensor_parallel) if c.gpus_per_rank else 0.0
        self.group = ActorGroup("rollout", "dpo_ray.workers.rollout.RolloutWorker", c.rollout_engines, cpus=c.rollout_cpus,
                                gpus=gpus, strategy=c.placement, call_timeout_s=c.call_timeout_s, env=engine_env(gpus),
                                init_kwargs=dict(model_path=model_path, cfg=cfg.rollout, policy_dtype=cfg.model.dtype,
                                                 gpus=gpus, tensor_parallel=c.rollout_tensor_parallel, seed=cfg.online.seed))

    def generate(self, prompts: Sequence[Text], seeds: Sequence[int], n: int, temperature: float, top_p: float,
                 max_tokens: int) -> List[List[str]]:
        """n responses for each prompt, in prompt order."""
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        return self.group.run_shards("generate", list(zip(prompts, seeds)), n, temperature, top_p, max_tokens)

    def prompt_logprobs(self, token_ids: Sequence[Sequence[int]]) -> List[List[float]]:
        return self.group.run_shards("prompt_logprobs", token_ids)

    def load_weights(self, weights: ray.ObjectRef) -> None:
        """Every engine loads the same safetensors blob; Ray hands each the object, the driver never copies it."""
        self.group.run("load_weights", weights)

    def shutdown(self) -> None:
        self.group.shutdown()
