"""Reward workers: a rule function named by import path, or an HF sequence-classification model. One float per
(prompt, response)."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence

from ..data.formats import Text
from ..data.prompts import prompt_text
from .user_code import BoundedCaller, UserCodeError, call_user_function, quoted


def import_function(path: str, option: str = "reward.fn") -> Callable:
    """'package.module:function' (or 'package.module.function') -> the function; errors name the option."""
    module, _, name = path.rpartition(":") if ":" in path else path.rpartition(".")
    if not module:
        raise ValueError(f"{option}={path!r}: expected 'module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{option}={path!r}: cannot import it ({e})") from None
    if not callable(fn):
        raise ValueError(f"{option}={path!r} is not callable")
    return fn


def check_rewards(name: str, rewards: Sequence, expected: int) -> list[float]:
    """A reward's output, checked: exactly one finite number per response, or an error naming the reward."""
    if len(rewards) != expected:
        raise ValueError(f"reward {name}: returned {len(rewards)} scores for {expected} responses")
    out = []
    for i, value in enumerate(rewards):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"reward {name}: score {i} is {value!r}, not a finite number")
        out.append(float(value))
    return out


class RuleRewardWorker:
    def __init__(self, fn: str, timeout_s: float | None = None, rank: int = 0, world_size: int = 1):
        """timeout_s: the longest one call of fn may take (reward.timeout_s; None: no bound)."""
        self.name, self.fn, self.call = fn, import_function(fn), BoundedCaller(timeout_s)

    def score(self, items: Sequence[tuple[Text, str]]) -> list[float]:
        """One score per (prompt, response); a call that raises, overruns or gives no finite number is named."""
        scores = []
        for prompt, response in items:
            text = prompt_text(prompt)
            where = f"prompt {quoted(text)}, response {quoted(response)}"
            value = call_user_function(self.call, f"reward.fn={self.name}", self.fn, (text, response), where)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserCodeError(f"reward.fn={self.name} returned {value!r}, not a finite number, on {where}")
            scores.append(float(value))
        return scores


class ModelRewardWorker:
    """Scores the conversation (its chat template when the reward tokenizer has one) with logit 0 of the classifier."""

    def __init__(
        self,
        model_path: str,
        micro_batch_size: int,
        max_length: int,
        trust_remote_code: bool = False,
        gpus: float = 0.0,
        dtype: str = "auto",
        rank: int = 0,
        world_size: int = 1,
    ):
        """dtype: the run's model.dtype (auto: bfloat16 on GPU, where a 7B reward model in fp32 would take 28 GB)."""
        from transformers import AutoModelForSequenceClassification

        from .device import device_spec, use_local_gpu  # here: a rule's actor starts without torch (~1.3 s)
        from .models import load_tokenizer

        self.name, self.micro_batch_size, self.max_length = model_path, micro_batch_size, max_length
        self.tokenizer = load_tokenizer(model_path, trust_remote_code)
        self.tokenizer.padding_side = "right"
        self.templated = getattr(self.tokenizer, "chat_template", None) is not None
        self.spec = device_spec(gpus, dtype)
        use_local_gpu(self.spec)
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(
                model_path, dtype=self.spec.dtype, trust_remote_code=trust_remote_code, use_safetensors=True
            )
            .to(self.spec.device)
            .eval()
        )
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id  # the classifier finds each last token by it

    def text(self, prompt: Text, response: str) -> str:
        if self.templated:
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            return self.tokenizer.apply_chat_template(
                messages + [{"role": "assistant", "content": response}], tokenize=False
            )
        return prompt_text(prompt) + response

    def score(self, items: Sequence[tuple[Text, str]]) -> list[float]:
        """One score per (prompt, response)."""
        import torch

        texts = [self.text(p, r) for p, r in items]
        scores: list[float] = []
        for start in range(0, len(texts), self.micro_batch_size):
            enc = self.tokenizer(
                texts[start : start + self.micro_batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=not self.templated,
            )  # a template holds its own BOS
            with torch.no_grad():
                scores += self.model(**enc.to(self.spec.device)).logits[:, 0].float().tolist()
        return check_rewards(self.name, scores, len(items))
