"""The rollout group: K vLLM engines; prompts are sharded across them and weights are pushed into all of them."""

from __future__ import annotations

from collections.abc import Sequence

import ray

from ..adapter_sync import syncs_adapter
from ..data.formats import Text
from ..schema import RunConfig
from ..sizing.resources import rollout_need
from ..workers.device import device_spec
from ..workers.engine_args import engine_env
from ..workers.rollout import Draw, Sample
from .actor_group import ActorGroup, PendingCall


class RolloutGroup:
    def __init__(self, cfg: RunConfig, model_path: str, max_model_len: int = 0, placement=None):
        """max_model_len: the run's longest prompt + response, sizing engines unless rollout.max_model_len does."""
        need = rollout_need(cfg)
        kwargs = dict(
            model_path=model_path,
            cfg=cfg.rollout,
            policy_dtype=cfg.model.dtype,
            gpus=need.gpus,
            seed=cfg.online.seed,
            max_model_len=max_model_len,
            lora_rank=cfg.model.lora.r if syncs_adapter(cfg) else 0,
        )
        env = engine_env(cfg.rollout, need.gpus)
        worker = "dpo_ray.workers.rollout.RolloutWorker"
        self.group = ActorGroup(need, worker, cfg.cluster, env, kwargs, placement=placement, reusable=True)
        self.workers_per_engine = cfg.rollout.tensor_parallel_size
        self.backend = device_spec(need.gpus).backend

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
        return self.submit_generate(prompts, seeds, n, temperature, top_p, max_tokens, with_logp).result()

    def submit_generate(
        self,
        prompts: Sequence[Text],
        seeds: Sequence[int],
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        with_logp: bool = False,
    ) -> PendingCall:
        """generate, not waited for: the engines draw while the caller goes on (result() gives the samples)."""
        return self.group.submit_shards("generate", jobs(prompts, seeds), n, temperature, top_p, max_tokens, with_logp)

    def draw(self, prompts: Sequence[Text], seeds: Sequence[int], draws: Sequence[Draw]) -> list[list[list[Sample]]]:
        """Each draw's samples of every prompt (per draw, in prompt order), all drawn in one call per engine."""
        per_prompt = self.group.run_shards("draw", jobs(prompts, seeds), list(draws))
        return [[outs[k] for outs in per_prompt] for k in range(len(draws))]

    def join_weight_group(self, address: str, port: int, first_rank: int, world_size: int) -> list[ray.ObjectRef]:
        """Every worker of every engine joins the sync group: engine e's workers take the ranks from
        first_rank + e * workers_per_engine on."""
        timeout = self.group.call_timeout_s
        return [
            actor.call.remote(
                "join_weight_group",
                address,
                port,
                first_rank + e * self.workers_per_engine,
                world_size,
                self.backend,
                timeout,
            )
            for e, actor in enumerate(self.group.actors)
        ]

    def receive_weights(self, specs: list, bucket_bytes: int, adapter_config: str | None) -> list[ray.ObjectRef]:
        if adapter_config is None:
            return self.group.submit("receive_weights", specs, bucket_bytes)
        return self.group.submit("receive_adapter", specs, bucket_bytes, adapter_config)

    def shutdown(self) -> None:
        self.group.shutdown()


def jobs(prompts: Sequence[Text], seeds: Sequence[int]) -> list[tuple[Text, int]]:
    """The engines' (prompt, seed) jobs: one seed a prompt."""
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    return list(zip(prompts, seeds))
