"""One vLLM engine of the rollout group: n samples per prompt, prompt log-probs, and in-place weight updates."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data.formats import Text
from ..data.tokenize import encode_prompt
from ..schema import RolloutConfig
from .device import device_spec, own_gpus_only
from .engine_args import engine_args


@dataclass(frozen=True)
class Sample:
    """One generated response: its text, its token ids, and (when asked for) their summed log-prob under the engine's
    weights, before temperature and top-p: the policy's own log-prob of the tokens it drew."""

    text: str
    token_ids: tuple[int, ...]
    logp: float | None = None


@dataclass(frozen=True)
class Draw:
    """One way of sampling a call's prompts: n responses each at temperature (0: greedy) and top_p, up to max_tokens,
    with their log-probs if with_logp."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int
    with_logp: bool = False


class RolloutWorker:
    def __init__(
        self,
        model_path: str,
        cfg: RolloutConfig,
        policy_dtype: str,
        gpus: float,
        seed: int,
        rank: int,
        world_size: int,
        max_model_len: int = 0,
        lora_rank: int = 0,
    ):
        """One engine; max_model_len: the run's longest prompt + response (0: unknown); lora_rank: the LoRA adapters
        it will serve (0: none, weights arrive whole)."""
        if gpus:
            import ray

            os.environ.update(own_gpus_only(os.environ, ray.get_gpu_ids()))
        from vllm import LLM

        dtype = str(policy_dtype if cfg.dtype == "auto" else cfg.dtype)
        spec = device_spec(gpus, dtype)
        self.rank = rank
        args = engine_args(cfg, gpus, str(spec.dtype).removeprefix("torch."), max_model_len, lora_rank, seed + rank)
        self.llm = LLM(model=model_path, **args)
        self.tokenizer = self.llm.get_tokenizer()
        self.templated = getattr(self.tokenizer, "chat_template", None) is not None
        self.adapter = None  # the LoRARequest of the policy's latest adapter, once one has arrived
        self.adapter_root = Path(tempfile.mkdtemp(prefix="dpo-ray-adapters-"))

    def close(self) -> None:
        """Shut the engine down and leave the process as vLLM found it (its process groups, frozen objects), for the
        next engine built in it (cluster.reuse_rank_processes)."""
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        self.llm = None
        cleanup_dist_env_and_memory()
        shutil.rmtree(self.adapter_root, ignore_errors=True)

    def join_weight_group(self, address: str, port: int, first_rank: int, world_size: int, backend: str, timeout_s):
        """Every worker of this engine joins the sync group (ranks first_rank, first_rank + 1, ...)."""
        return self.llm.collective_rpc(
            "join_weight_group", args=(address, port, first_rank, world_size, backend, timeout_s)
        )

    def receive_weights(self, specs: list, bucket_bytes: int) -> int:
        """Load the weights streamed over the sync group in place; cached KV blocks of the old weights go."""
        loaded = self.llm.collective_rpc("receive_weights", args=(specs, bucket_bytes))[0]
        self.llm.reset_prefix_cache()
        return loaded

    def receive_adapter(self, specs: list, bucket_bytes: int, adapter_config: str) -> int:
        """Receive the policy's LoRA adapter; generation uses it from now on (a new adapter id each time)."""
        from vllm.lora.request import LoRARequest

        version = self.adapter.lora_int_id + 1 if self.adapter else 1
        directory = self.adapter_root / f"adapter-{version}"
        received = self.llm.collective_rpc(
            "receive_adapter", args=(specs, bucket_bytes, str(directory), adapter_config)
        )
        if self.adapter:
            self.llm.llm_engine.remove_lora(self.adapter.lora_int_id)
            shutil.rmtree(self.adapter.lora_path, ignore_errors=True)
        self.adapter = LoRARequest(f"policy-{version}", version, str(directory))
        return received[0]

    def _prompt(self, prompt: Text):
        from vllm.inputs import TokensPrompt

        if isinstance(prompt, list) and not self.templated:
            raise ValueError("message-list prompts need a tokenizer with a chat template")
        return TokensPrompt(prompt_token_ids=encode_prompt(self.tokenizer, prompt, isinstance(prompt, list)))

    def generate(
        self,
        jobs: Sequence[tuple[Text, int]],
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        with_logp: bool = False,
    ) -> list[list[Sample]]:
        """n responses per (prompt, seed) job; the seed makes a prompt's samples the same whichever engine draws them.
        with_logp also returns their log-probs (it costs: on a tiny model, twice the generation time)."""
        return [outs[0] for outs in self.draw(jobs, [Draw(n, temperature, top_p, max_tokens, with_logp)])]

    def draw(self, jobs: Sequence[tuple[Text, int]], draws: Sequence[Draw]) -> list[list[list[Sample]]]:
        """Every draw of every (prompt, seed) job in one engine call, so the engine batches them all (a held-out
        evaluation's sampled and greedy answers decode together): each job's samples, per draw. A prompt that leaves
        no room for a draw's max_tokens in the engine (a judge prompt past a small model's positions) gets empty
        responses, which a judge's tally counts as no verdict, instead of failing the whole call."""
        from vllm import SamplingParams

        prompts = [self._prompt(p) for p, _ in jobs]
        limit = self.llm.model_config.max_model_len
        fits = [
            (i, k)
            for k, d in enumerate(draws)
            for i, prompt in enumerate(prompts)
            if len(prompt["prompt_token_ids"]) <= limit - d.max_tokens
        ]
        params = [
            SamplingParams(
                n=draws[k].n,
                temperature=draws[k].temperature,
                top_p=draws[k].top_p,
                max_tokens=draws[k].max_tokens,
                seed=jobs[i][1],
                skip_special_tokens=True,
                logprobs=0 if draws[k].with_logp else None,
            )
            for i, k in fits
        ]
        chosen = [prompts[i] for i, _ in fits]
        outputs = self.llm.generate(chosen, params, use_tqdm=False, lora_request=self.adapter) if fits else []
        drawn = {
            (i, k): [
                Sample(c.text, tuple(c.token_ids), float(c.cumulative_logprob) if draws[k].with_logp else None)
                for c in out.outputs
            ]
            for (i, k), out in zip(fits, outputs, strict=True)
        }
        return [[drawn.get((i, k), [Sample("", ())] * d.n) for k, d in enumerate(draws)] for i in range(len(jobs))]
