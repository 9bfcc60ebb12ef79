"""The embedded default: a tiny tokenizer and Llama, warm-started by SFT on a flawed demonstrator, and DPO pairs
from its own samples. Built once into the cache; no download."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..atomic import build_once
from ..data.pairs import build_pairs
from ..data.tokenize import encode_turn
from ..model_dir import cache_damage
from ..schema import EmbeddedConfig
from . import number_words
from .sampling import sample_responses

log = logging.getLogger(__name__)

BUILD_VERSION = 2  # bump when the build below changes what it writes (2: the KTO variant of the train data)
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}<|system|>{% elif m['role'] == 'user' %}<|user|>"
    "{% else %}<|assistant|>{% endif %}{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


@dataclass(frozen=True)
class EmbeddedTask:
    model_dir: Path
    train_file: Path
    eval_file: Path
    train_prompts: list[str]
    eval_prompts: list[str]
    train_kto_file: Path  # the same samples unpaired: each distinct answer, labelled by the rule (KTO's layout)

    @staticmethod
    def reward(prompt: str, response: str) -> float:
        return number_words.reward(prompt, response)


def build_tokenizer(texts: list[str], vocab_size: int = 384):
    """Byte-level BPE with one token per digit, wrapped as a transformers tokenizer with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<|end|>", additional_special_tokens=SPECIAL_TOKENS[1:]
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer, seed: int):
    """A 0.42M-parameter Llama: hidden 128, 2 layers, 4 query / 2 KV heads, tied embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def sft(
    model, tokenizer, numbers: list[int], cfg: EmbeddedConfig, seed: int, batch_size: int = 64, lr: float = 3e-3
) -> None:
    """Supervised warm start on fresh flawed demonstrations each step (loss on response tokens only)."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, cfg.sft_steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / cfg.sft_steps))
    )
    model.train()
    for _ in range(cfg.sft_steps):
        ids, labels = [], []
        for n in rng.choices(numbers, k=batch_size):
            prompt_ids, full = encode_turn(
                tokenizer, number_words.prompt(n), number_words.flawed_words(n, rng, cfg.flaw_rate), True
            )
            ids.append(full)
            labels.append([-100] * len(prompt_ids) + full[len(prompt_ids) :])
        width = max(map(len, ids))
        input_ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x in ids])
        label_ids = torch.tensor([y + [-100] * (width - len(y)) for y in labels])
        attention = (torch.arange(width)[None, :] < torch.tensor([len(x) for x in ids])[:, None]).long()
        loss = model(input_ids=input_ids, attention_mask=attention, labels=label_ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def _pairs_file(
    path: Path, model, tokenizer, numbers: list[int], n: int, seed: int, unpaired_path: Path | None = None
) -> int:
    """Sample n answers per prompt and write best-vs-worst pairs to path; with unpaired_path, also every distinct
    answer labelled by the rule reward (desirable when exactly right), TRL's unpaired layout."""
    prompts = [number_words.prompt(k) for k in numbers]
    samples = sample_responses(model, tokenizer, prompts, n, temperature=1.0, seed=seed)
    rewards = [[number_words.reward(p, r) for r in outs] for p, outs in zip(prompts, samples)]
    as_user = lambda p: [{"role": "user", "content": p}]  # noqa: E731
    as_assistant = lambda r: [{"role": "assistant", "content": r}]  # noqa: E731
    pairs = build_pairs([as_user(p) for p in prompts], [[as_assistant(r) for r in outs] for outs in samples], rewards)
    with path.open("w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair) + "\n")
    if unpaired_path is not None:
        with unpaired_path.open("w", encoding="utf-8") as f:
            for prompt, outs, scores in zip(prompts, samples, rewards):
                for answer in sorted(set(outs)):
                    row = {"prompt": as_user(prompt), "completion": as_assistant(answer)}
                    f.write(json.dumps({**row, "label": scores[outs.index(answer)] == 1.0}) + "\n")
    return len(pairs)


def _key(cfg: EmbeddedConfig, seed: int) -> str:
    blob = json.dumps({"cfg": asdict(cfg), "seed": seed, "version": BUILD_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensure_embedded_task(cfg: EmbeddedConfig, cache_dir: str, seed: int = 0) -> EmbeddedTask:
    """Build (or reuse from the cache) the tokenizer, the SFT model and the train/eval pair files."""
    root = Path(cache_dir).expanduser() / "tasks" / f"number_words-{_key(cfg, seed)}"
    numbers = list(range(cfg.numbers))
    random.Random(seed).shuffle(numbers)
    eval_numbers, train_numbers = numbers[: cfg.eval_numbers], numbers[cfg.eval_numbers :]
    task = EmbeddedTask(
        root / "model",
        root / "train.jsonl",
        root / "eval.jsonl",
        [number_words.prompt(n) for n in sorted(train_numbers)],
        [number_words.prompt(n) for n in sorted(eval_numbers)],
        root / "train_kto.jsonl",
    )

    def build(tmp: Path) -> None:
        if (root / "done").exists():
            damage = cache_damage(task.model_dir)
            log.warning("the embedded task's cached model %s is damaged (%s): building the task again", root, damage)
        else:
            log.info("building the embedded number-words task into %s (once)", root)
        rng = random.Random(seed)
        corpus = [
            number_words.prompt(n) + " " + number_words.flawed_words(n, rng, 0.5)
            for n in range(cfg.numbers)
            for _ in range(2)
        ]
        tokenizer = build_tokenizer(corpus)
        model = build_model(tokenizer, seed)
        sft(model, tokenizer, train_numbers, cfg, seed)
        model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        n_train = _pairs_file(
            tmp / "train.jsonl",
            model,
            tokenizer,
            train_numbers,
            cfg.samples_per_prompt,
            seed + 1,
            tmp / "train_kto.jsonl",
        )
        n_eval = _pairs_file(tmp / "eval.jsonl", model, tokenizer, eval_numbers, cfg.samples_per_prompt, seed + 2)
        (tmp / "done").write_text(json.dumps({"train_pairs": n_train, "eval_pairs": n_eval}))

    build_once(root, build, lambda: (root / "done").exists() and cache_damage(task.model_dir) is None)
    return task
