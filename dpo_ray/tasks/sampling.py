"""Sampling from an HF causal LM with its chat template, and the task accuracy of those samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


@torch.no_grad()
def sample_responses(
    model,
    tokenizer,
    prompts: Sequence[str],
    n: int,
    temperature: float = 1.0,
    max_new_tokens: int = 24,
    batch_size: int = 256,
    seed: int = 0,
) -> list[list[str]]:
    """n responses per user prompt; temperature 0 means greedy (then n identical responses collapse to one call)."""
    model.eval()
    tokenizer.padding_side = "left"
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    out: list[list[str]] = [[] for _ in prompts]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            greedy = temperature <= 0
            generated = model.generate(
                **enc,
                do_sample=not greedy,
                temperature=None if greedy else temperature,
                top_p=None,
                top_k=None,
                num_return_sequences=1 if greedy else n,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            decoded = tokenizer.batch_decode(generated[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            per_prompt = 1 if greedy else n
            for i in range(len(chunk)):
                out[start + i] = decoded[i * per_prompt : (i + 1) * per_prompt] * (n if greedy else 1)
    finally:
        torch.random.set_rng_state(generator_state)
    return out


def task_accuracy(
    model,
    tokenizer,
    prompts: Sequence[str],
    reward: Callable[[str, str], float],
    n: int,
    temperature: float = 1.0,
    seed: int = 0,
) -> float:
    """Mean rule reward over n sampled responses per prompt."""
    samples = sample_responses(model, tokenizer, prompts, n, temperature=temperature, seed=seed)
    scores = [reward(p, r) for p, outs in zip(prompts, samples) for r in outs]
    return sum(scores) / len(scores)
