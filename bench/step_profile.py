"""Where an offline policy step's time goes at TRL's default batch (run by hand: bench/step_profile.py).

The workload of issue 17: a ~26M Llama (vocab 1000), 8 pairs per step (prompts 10-40, responses 10-60 tokens), fp32,
AdamW, the default shape (2 ranks of 1 CPU at the ZeRO stage --zero-stage gives, micro-batches of 4, so one
micro-batch per rank). After warm-up
steps, the driver times whole steps and each rank times its own train_step; the difference is the Ray call. Then
one step of rank 0 runs under torch.profiler (rank 1 steps beside it, unprofiled) and its operators' self time is
split into compute, collectives (ZeRO-3's all-gathers and reduce-scatters, the non-finite all-reduce), host
synchronisations (.item()), the optimizer, and the rest; collation is timed apart on the same micro-batch.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

CATEGORIES = (  # the first match names an operator's category
    ("collectives", ("gloo", "c10d", "all_gather", "allgather", "reduce_scatter", "all_reduce", "allreduce", "wait")),
    ("host syncs (.item)", ("aten::item", "_local_scalar_dense")),
    ("optimizer", ("Optimizer.step", "adam", "_foreach", "optimizer")),
    ("ZeRO-3 gather/partition bookkeeping", ("PreBackwardFunction", "PostBackwardFunction", "ds_", "partition")),
)


def build_model(out_dir: Path) -> Path:
    import torch
    from offline_vs_trl import LLAMA_26M
    from transformers import LlamaConfig, LlamaForCausalLM

    from dpo_ray.tasks.embedded import build_tokenizer

    config = LlamaConfig(vocab_size=1000, **LLAMA_26M)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out_dir, safe_serialization=True)
    build_tokenizer([f"{n} is a number" for n in range(200)]).save_pretrained(out_dir)
    return out_dir


def make_pairs(n: int, seed: int):
    from dpo_ray.data.tokenize import TokenizedPair

    rng = random.Random(seed)
    ids = lambda k: tuple(rng.randrange(10, 1000) for _ in range(k))  # noqa: E731
    return [
        TokenizedPair(ids(rng.randint(10, 40)), ids(rng.randint(10, 60)), ids(rng.randint(10, 60))) for _ in range(n)
    ]


def timed_step(self, micro_batches, scale):
    """Runs inside a rank's actor: its train_step and the seconds it took there."""
    began = time.perf_counter()
    self.worker.train_step(micro_batches, scale)
    return time.perf_counter() - began


def profiled_step(self, micro_batches, scale):
    """Runs inside rank 0's actor: one train_step under torch.profiler; (operator, self seconds) and wall seconds."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        began = time.perf_counter()
        self.worker.train_step(micro_batches, scale)
        wall = time.perf_counter() - began
    ops = []
    for event in prof.events():  # an operator counts where its nearest named ancestor does (Adam's ops: optimizer)
        names, parent = [event.name], event.cpu_parent
        while parent is not None:
            names.append(parent.name)
            parent = parent.cpu_parent
        ops.append((names, event.self_cpu_time_total / 1e6))
    return ops, wall


def category(names: list[str]) -> str:
    """The category of an operator, or else of its nearest ancestor that has one."""
    for name in names:
        lowered = name.lower()
        for label, needles in CATEGORIES:
            if any(n.lower() in lowered for n in needles):
                return label
    return "compute and the rest"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--zero-stage", default="auto", choices=["auto", "0", "1", "2", "3"])
    args = parser.parse_args()

    import ray

    from dpo_ray.data.batches import build_micro_batches, step_scale
    from dpo_ray.data.collate import collate_pairs, make_layout
    from dpo_ray.groups.policy_group import PolicyGroup
    from dpo_ray.schema import RunConfig
    from dpo_ray.workers.device import device_spec, rank_env

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cfg = RunConfig()
    cfg.cluster.policy_ranks, cfg.cluster.cpus_per_rank = 2, 1.0
    cfg.deepspeed.zero_stage = args.zero_stage
    cfg.train.batch_size, cfg.train.micro_batch_size, cfg.train.lr = args.pairs, 4, 1e-6
    per_rank = -(-args.pairs // (2 * cfg.train.micro_batch_size))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "model")
        policy = PolicyGroup(cfg, str(model_dir), 100, per_rank, rank_env(device_spec(0), 1))
        stage = policy.zero_stage
        try:
            steps = [make_pairs(args.pairs, seed) for seed in range(args.steps + 3)]
            plans = []
            for pairs in steps:
                reference = ([-60.0] * len(pairs), [-60.0] * len(pairs))
                _, plan = build_micro_batches(
                    pairs, range(len(pairs)), 2, cfg.train.micro_batch_size, reference, per_rank
                )
                plans.append((plan, step_scale(pairs)))
            for plan, scale in plans[:2]:  # warm-up
                policy.train_step(plan, scale)
            driver, ranks = [], []
            for plan, scale in plans[2:-1]:
                began = time.perf_counter()
                refs = [a.__ray_call__.remote(timed_step, p, scale) for a, p in zip(policy.group.actors, plan)]
                inside = ray.get(refs)
                driver.append(time.perf_counter() - began)
                ranks.append(max(inside))
            plan, scale = plans[-1]
            profiled = policy.group.actors[0].__ray_call__.remote(profiled_step, plan[0], scale)
            beside = policy.group.actors[1].__ray_call__.remote(timed_step, plan[1], scale)
            (ops, wall), _ = ray.get([profiled, beside])
        finally:
            policy.shutdown()
        layout = make_layout(str(cfg.data.layout), cfg.data.pack_length, str(cfg.model.attn_implementation))
        began = time.perf_counter()
        for micro in plan[0]:
            collate_pairs(micro.pairs, 0, layout)
        collation = time.perf_counter() - began
    ray.shutdown()

    totals: dict[str, float] = {}
    by_op: dict[tuple[str, str], float] = {}
    for names, seconds in ops:
        label = category(names)
        totals[label] = totals.get(label, 0.0) + seconds
        by_op[(label, names[0])] = by_op.get((label, names[0]), 0.0) + seconds
    step, inside = statistics.median(driver), statistics.median(ranks)
    print(
        f"\n{args.pairs} pairs/step, 2 ranks at ZeRO stage {stage}, layout {cfg.data.layout}: "
        f"median of {len(driver)} steps\n"
    )
    print("| part | s | share of the step |")
    print("|---|---|---|")
    print(f"| whole step, driver's clock | {step:.3f} | 100% |")
    print(
        f"| Ray call (driver minus the slower rank's train_step) | {step - inside:.3f} | {(step - inside) / step:.0%} |"
    )
    print(f"| collation of rank 0's micro-batches (timed apart) | {collation:.3f} | {collation / step:.0%} |")
    totals["outside any operator (waits, Python)"] = max(0.0, wall - sum(totals.values()))
    for label, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| rank 0 under the profiler: {label} | {seconds:.3f} | {seconds / wall:.0%} of its {wall:.3f} s |")
    print("\nlargest operators of rank 0 (self seconds):")
    for (label, name), seconds in sorted(by_op.items(), key=lambda kv: -kv[1])[:14]:
        print(f"  {seconds:8.4f}  {label:22s} {name}")


if __name__ == "__main__":
    main()
