"""dpo-ray plan's per-rank memory estimate against measurement (run by hand: .venv/bin/python bench/plan_memory.py).

Each row starts a policy group on this machine's CPUs (float32, gloo), takes one AdamW (or SGD) step on 4 short
pairs, and reads each rank's peak host RSS growth from just before the model loads (VmHWM minus the RSS then): the
model states, ZeRO's buffers, the checkpoint read while loading, and whatever the allocator keeps. The estimate is
the plan's for that rank without its activations (a few tokens here), log-prob chunk and per-process margin.
Models, built on the fly with random weights: the embedded model's shape (0.42M), SmolLM2-135M's shape (134.5M) and
a ~1B Llama (0.86B; at most what this 24 GiB machine holds twice over: full fine-tuning runs on one rank at stage 0
with SGD, LoRA also on two ZeRO-3 ranks with max_live_parameters=1e8)."""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
    "embedded": dict(
        vocab_size=384, hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=128,
    ),
    "smollm2-135m": dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, tie_word_embeddings=True, max_position_embeddings=8192,
    ),
    "llama-1b": dict(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=4, tie_word_embeddings=False, max_position_embeddings=2048,
    ),
}  # fmt: skip
# (model, ranks, stage, optimizer, lora, max_live_parameters)
ROWS = [
    ("embedded", 2, "0", "adamw", False, 0),
    ("embedded", 2, "3", "adamw", False, 0),
    ("smollm2-135m", 2, "0", "adamw", False, 0),
    ("smollm2-135m", 2, "1", "adamw", False, 0),
    ("smollm2-135m", 2, "2", "adamw", False, 0),
    ("smollm2-135m", 2, "3", "adamw", False, 0),
    ("smollm2-135m", 2, "3", "adamw", True, 0),
    ("llama-1b", 1, "0", "sgd", False, 0),
    ("llama-1b", 1, "0", "adamw", True, 0),
    ("llama-1b", 2, "3", "adamw", True, 100_000_000),
]


def build(name: str, root: Path) -> str:
    """A Llama of this shape with random float32 weights and the embedded task's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from dpo_ray.tasks import number_words
    from dpo_ray.tasks.embedded import build_tokenizer

    path = root / name
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(pad_token_id=0, **SHAPES[name])).save_pretrained(path, safe_serialization=True)
    build_tokenizer([number_words.prompt(n) for n in range(100)]).save_pretrained(path)
    return str(path)


def measure(model_dir: str, ranks: int, stage: str, optimizer: str, lora: bool, max_live: int) -> tuple[list, float]:
    from dpo_ray.data.batches import build_micro_batches, step_scale
    from dpo_ray.data.tokenize import TokenizedPair
    from dpo_ray.groups.policy_group import PolicyGroup
    from dpo_ray.schema import RunConfig
    from dpo_ray.sizing.memory_estimate import policy_rank, policy_shape
    from dpo_ray.workers.device import device_spec, rank_env

    cfg = RunConfig()
    cfg.cluster.policy_ranks, cfg.deepspeed.zero_stage, cfg.model.lora.enabled = ranks, stage, lora
    cfg.train.optimizer, cfg.train.micro_batch_size = optimizer, 1
    cfg.deepspeed.max_live_parameters = max_live or cfg.deepspeed.max_live_parameters
    rng = random.Random(0)
    ids = lambda k: tuple(rng.randrange(5, 90) for _ in range(k))  # noqa: E731
    pairs = [TokenizedPair(ids(6), ids(4), ids(5)) for _ in range(4)]
    per_rank = 4 // ranks
    policy = PolicyGroup(cfg, model_dir, 2, per_rank, rank_env(device_spec(0), 1))
    try:
        _, plan = build_micro_batches(pairs, range(4), ranks, 1, ([-5.0] * 4, [-6.0] * 4), per_rank=per_rank)
        policy.train_step(plan, step_scale(pairs))
        peaks = [m["host_peak_growth"] for m in policy.group.run("memory_growth")]
    finally:
        policy.shutdown()
    parts = policy_rank(cfg, policy_shape(cfg, model_dir), ranks, int(stage)).host
    return peaks, sum(p.bytes for p in parts if p.name not in ("activations", "log-prob chunk", "process"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SHAPES), help="comma-separated: " + ", ".join(SHAPES))
    args = parser.parse_args()
    import ray

    wanted = args.models.split(",")
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=256 << 20, log_to_driver=False)
    print("| model | ranks | stage | optimizer | estimate GB | measured peak GB (per rank) | estimate / measured |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        built: dict[str, str] = {}
        for name, ranks, stage, optimizer, lora, max_live in ROWS:
            if name not in wanted:
                continue
            if name not in built:
                built[name] = build(name, Path(tmp))
            peaks, estimate = measure(built[name], ranks, stage, optimizer, lora, max_live)
            ratio = ", ".join(f"{estimate / p:.2f}" for p in peaks)
            label = f"{optimizer}{' LoRA' if lora else ''}" + (f", max_live {max_live:.0e}" if max_live else "")
            measured = ", ".join(f"{p / 1e9:.3f}" for p in peaks)
            print(f"| {name} | {ranks} | {stage} | {label} | {estimate / 1e9:.3f} | {measured} | {ratio} |", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
