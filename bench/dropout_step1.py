"""Dropout at step 1, measured (run by hand: .venv/bin/python bench/dropout_step1.py).

A GPT-2 with its default dropout (0.1 in embeddings, attention and MLP), random weights and the embedded task's
tokenizer, one optimizer step at TRL's default 8 pairs (and at 64) with model.disable_dropout on and off. At step 1
the policy is its reference, so its implicit rewards and KL should be 0 and rewards/accuracies 0 (no pair has a
positive margin); with dropout on they are noise.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

KEYS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "kl/chosen")


def gpt2(out: Path) -> str:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from dpo_ray.tasks import number_words
    from dpo_ray.tasks.embedded import build_tokenizer

    rng = random.Random(0)
    corpus = [number_words.prompt(n) + " " + number_words.flawed_words(n, rng, 0.5) for n in range(1000)]
    tokenizer = build_tokenizer(corpus)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=128, n_layer=4, n_head=4)
    GPT2LMHeadModel(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return str(out)


def pairs(n: int, seed: int):
    from dpo_ray.data.tokenize import TokenizedPair

    rng = random.Random(seed)
    ids = lambda k: tuple(rng.randrange(5, 300) for _ in range(k))
    return [TokenizedPair(ids(rng.randint(4, 12)), ids(rng.randint(3, 9)), ids(rng.randint(3, 9))) for _ in range(n)]


def step1(model: str, batch: int, disable: bool, root: Path) -> dict[str, float]:
    from dpo_ray.campaign.inputs import OfflineInputs
    from dpo_ray.campaign.offline import OfflineCampaign
    from dpo_ray.schema import RunConfig

    cfg = RunConfig()
    cfg.output_dir, cfg.cache_dir, cfg.progress, cfg.report_to = str(root / f"{batch}-{disable}"), str(root), False, []
    cfg.model.disable_dropout, cfg.model.attn_implementation, cfg.data.layout = disable, "eager", "padded"
    cfg.train.batch_size, cfg.train.micro_batch_size, cfg.train.max_steps = batch, min(batch, 8), 1
    data = pairs(batch + 8, seed=batch)
    result = OfflineCampaign(cfg, OfflineInputs(model, model, data[:batch], data[batch:])).run()
    row = next(
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line
    )
    return {k: row[k] for k in KEYS}


def main() -> None:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = gpt2(root / "gpt2")
        print("| pairs/step | model.disable_dropout | " + " | ".join(KEYS) + " |")
        print("|---|---|" + "---|" * len(KEYS))
        for batch in (8, 64):
            for disable in (False, True):
                values = step1(model, batch, disable, root)
                print(f"| {batch} | {str(disable).lower()} | " + " | ".join(f"{values[k]:.3g}" for k in KEYS) + " |")
    ray.shutdown()


if __name__ == "__main__":
    main()
