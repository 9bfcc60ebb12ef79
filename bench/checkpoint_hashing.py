"""Save + check seconds of a round checkpoint, the driver hashing every byte vs the policy ranks hashing their own
(run by hand: .venv/bin/python bench/checkpoint_hashing.py; needs the SmolLM2 package that scripts/setup.sh installs).

SmolLM2-135M (fp32 on CPU) on 2 policy ranks at ZeRO-3 with AdamW, one step taken so the optimizer states exist; then,
alternating for --repeats rounds, a checkpoint saved and checked both ways:
- driver (before): the ranks write their shards, the driver hashes every file for the manifest (4 threads), and
  checks the checkpoint the way a resume did (hashing it all again); the ranks' save here still hashes, so the
  write alone is taken as that save less the ranks' hashing of the same bytes (their check);
- ranks: each rank hashes the shards it wrote right after writing them, the driver only the small rest, and the
  ranks hash a share each when the checkpoint is checked (dpo-ray's path now).
Prints the bytes per parameter, the seconds of each phase (median), and the hashing throughput behind the 70B
projection in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", default="~/.cache/dpo-ray")
    args = parser.parse_args()

    import ray

    from dpo_ray.campaign.checkpoints import MANIFEST, manifest, verify
    from dpo_ray.data.batches import build_micro_batches, step_scale
    from dpo_ray.data.tokenize import TokenizedPair
    from dpo_ray.file_digests import digests
    from dpo_ray.groups.policy_group import PolicyGroup
    from dpo_ray.schema import RunConfig
    from dpo_ray.sizing.model_shape import model_shape
    from dpo_ray.tasks.pretrained import ensure_pretrained
    from dpo_ray.workers.device import device_spec, rank_env

    model_dir = ensure_pretrained("smollm2-135m", args.cache_dir)
    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    os.environ["RAY_TMPDIR"] = str(work / "ray")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    cfg = RunConfig()
    cfg.cache_dir, cfg.cluster.policy_ranks, cfg.deepspeed.zero_stage = args.cache_dir, 2, "3"
    cfg.train.batch_size, cfg.train.micro_batch_size, cfg.cluster.cpus_per_rank = 2, 1, 1.0
    policy = PolicyGroup(cfg, model_dir, total_steps=4, accumulation=1, env=rank_env(device_spec(0), threads=1))
    try:
        pairs = [TokenizedPair(tuple(range(10, 30)), tuple(range(40, 50)), tuple(range(60, 70))) for _ in range(2)]
        reference = ([-30.0] * 2, [-30.0] * 2)
        plan = build_micro_batches(pairs, range(2), 2, 1, reference, per_rank=1)[1]
        policy.train_step(plan, step_scale(pairs))
        params = model_shape(model_dir).params
        phases = ("save", "manifest", "check")
        times = {way: {phase: [] for phase in phases} for way in ("driver", "ranks")}
        total = 0
        for repeat in range(args.repeats):
            for way, seconds in times.items():
                directory = work / "checkpoints" / f"{way}_{repeat}"
                began = time.perf_counter()
                hashed = policy.save_checkpoint(str(work / "checkpoints"), directory.name)  # the ranks hash here
                saved = time.perf_counter()
                rank_digests = hashed if way == "ranks" else None  # driver: every byte read back here
                (directory / MANIFEST).write_text(json.dumps(manifest(directory, rank_digests)))
                made = time.perf_counter()
                assert verify(directory, policy.hash_files if way == "ranks" else digests) is None
                checked = time.perf_counter()
                for phase, spent in zip(phases, (saved - began, made - saved, checked - made)):
                    seconds[phase].append(spent)
                total = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
                shutil.rmtree(directory)
        median = {way: {p: statistics.median(v) for p, v in seconds.items()} for way, seconds in times.items()}
        whole = {way: sum(m.values()) for way, m in median.items()}
        print(f"SmolLM2-135M, ZeRO-3 on 2 ranks, AdamW fp32: {total / 1e6:.0f} MB a checkpoint, {total / params:.1f} "
              f"bytes/parameter, {args.repeats} repeats (median seconds)")  # fmt: skip
        print("| who hashes | save (ranks write; now also hash) | manifest (driver) | check on resume | all |")
        print("|---|---|---|---|---|")
        # the driver way's save still ran the ranks' hashing (the code has no other save): the save before this change
        # was shorter by about the ranks' hashing of the same bytes, which is what their check measures
        median["driver"]["save"] -= median["ranks"]["check"]
        whole["driver"] -= median["ranks"]["check"]
        for way, label in (("driver", "the driver, every byte (before)"), ("ranks", "each rank its own (now)")):
            m = median[way]
            print(f"| {label} | {m['save']:.2f} | {m['manifest']:.2f} | {m['check']:.2f} | {whole[way]:.2f} |")
        print(f"driver hashing: {total / median['driver']['check'] / 1e6:.0f} MB/s (4 threads); "
              f"ranks: {total / median['ranks']['check'] / 1e6:.0f} MB/s (2 ranks x 4 threads); "
              f"x {whole['driver'] / whole['ranks']:.2f} in all")  # fmt: skip
    finally:
        policy.shutdown()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
