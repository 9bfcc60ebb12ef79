"""One vLLM engine of the rollout group: n samples per prompt, prompt log-probs, and in-place weight updates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..config import RolloutConfig
from ..data.formats import Text
from ..data.tokenize import encode_prompt
from .device import device_spec, passed_on


@dataclass(frozen=True)
class Sample:
    """One generated response: its text, its token ids, and (when asked for) their summed log-prob under the engine's
    weights, before temperature and top-p: the policy's own log-prob of the tokens it drew."""

    text: str
    token_ids: tuple[int, ...]
    logp: float | None = None


def engine_env(gpus: float) -> dict:
    """Environment of an engine's process. On CPU the engine runs in-process (3 s start instead of 24 s); that
    process then ignores torch.set_num_threads, which is why no training ever shares it."""
    env = {**passed_on(), "TOKENIZERS_PARALLELISM": "false"}
    if not gpus:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return env


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
    ):
        from vllm import LLM

        dtype = str(policy_dtype if cfg.dtype == "auto" else cfg.dtype)
        spec = device_spec(gpus, dtype)
        memory = (
            dict(kv_cache_memory_bytes=cfg.kv_cache_memory_mb << 20)
            if cfg.kv_cache_memory_mb
            else dict(gpu_memory_utilization=cfg.gpu_memory_utilization)
        )
        self.rank = rank
        self.llm = LLM(
            model=model_path,
            dtype=str(spec.dtype).removeprefix("torch."),
            enforce_eager=cfg.enforce_eager,
            max_model_len=cfg.max_model_len or None,
            seed=seed + rank,
            tensor_parallel_size=cfg.tensor_parallel_size,
            worker_extension_cls="dpo_ray.workers.vllm_weights.WeightLoader",
            **memory,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.templated = getattr(self.tokenizer, "chat_template", None) is not None

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
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                seed=seed,
                skip_special_tokens=True,
                logprobs=0 if with_logp else None,
            )
            for _, seed in jobs
        ]
        outputs = self.llm.generate([self._prompt(p) for p, _ in jobs], params, use_tqdm=False)
        return [
            [
                Sample(c.text, tuple(c.token_ids), float(c.cumulative_logprob) if with_logp else None)
                for c in out.outputs
            ]
            for out in outputs
        ]

    def load_weights(self, source) -> int:
        """Replace the engine's weights in place (safetensors bytes or file); cached KV blocks of old weights go."""
        loaded = self.llm.collective_rpc("load_safetensors", args=(source,))[0]
        self.llm.reset_prefix_cache()
        return loaded
