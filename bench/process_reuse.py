"""What a group's start costs in new processes and in kept ones (cluster.reuse_rank_processes), run by hand:
.venv/bin/python bench/process_reuse.py [--repeats 3]

On a local Ray of 8 logical CPUs: a 2-rank ZeRO-3 policy group of the embedded model (start to loaded), a 1-rank
reference group (start to loaded) and a vLLM CPU engine of the same model (start to ready), each started in new
processes and then again in the processes the one before left; the median of the repeats, one sitting."""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def model_dir(root: Path) -> str:
    from dpo_ray.tasks import number_words
    from dpo_ray.tasks.embedded import build_model, build_tokenizer

    rng = random.Random(0)
    tokenizer = build_tokenizer(
        [number_words.prompt(n) + " " + number_words.flawed_words(n, rng, 0.5) for n in range(1000)]
    )
    build_model(tokenizer, seed=0).save_pretrained(root / "model", safe_serialization=True)
    tokenizer.save_pretrained(root / "model")
    return str(root / "model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import ray

    from dpo_ray.groups import warm_ranks
    from dpo_ray.groups.policy_group import PolicyGroup
    from dpo_ray.groups.reference_group import ReferenceGroup
    from dpo_ray.groups.rollout_group import RolloutGroup
    from dpo_ray.schema import RunConfig
    from dpo_ray.workers.device import device_spec, rank_env

    root = Path(tempfile.mkdtemp(prefix="process-reuse-"))
    model = model_dir(root)
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    cfg = RunConfig()
    cfg.output_dir, cfg.cache_dir = str(root / "run"), str(root / "cache")
    cfg.cluster.policy_ranks, cfg.cluster.reference_ranks, cfg.deepspeed.zero_stage = 2, 1, "3"
    cfg.cluster.reuse_rank_processes, cfg.rollout.kv_cache_memory_mb = True, 32
    env = rank_env(device_spec(0), threads=1)
    groups = {
        "policy, 2 ZeRO-3 ranks": lambda: PolicyGroup(cfg, model, total_steps=1, accumulation=1, env=env),
        "reference, 1 rank": lambda: ReferenceGroup(cfg, model, env),
        "vLLM CPU engine": lambda: RolloutGroup(cfg, model, max_model_len=64),
    }
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, median of {args.repeats}\n")
    print("| group | new processes (s) | kept processes (s) | kept / new |")
    print("|---|---|---|---|")
    for name, start in groups.items():
        times: dict[str, list[float]] = {"new": [], "kept": []}
        for _ in range(args.repeats):
            warm_ranks.evict()  # nothing kept: new processes
            for kind in ("new", "kept"):
                began = time.perf_counter()
                group = start()
                times[kind].append(time.perf_counter() - began)
                group.shutdown()
        new, kept = statistics.median(times["new"]), statistics.median(times["kept"])
        print(f"| {name} | {new:.1f} | {kept:.1f} | {kept / new:.2f} |")
    warm_ranks.evict()
    ray.shutdown()


if __name__ == "__main__":
    main()
