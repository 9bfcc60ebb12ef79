"""Offline DPO step time on the embedded task by policy rank count.

Run by hand: .venv/bin/python bench/offline_step.py.

Prints one row per rank count and layout (padded, packed, prefix-shared): median and p90 optimizer-step time (the
first step warms up and is left out), pairs and tokens (padded-equivalent) per second, the run's wall time, and its
final held-out loss (equal across layouts: they compute the same thing). Runs are interleaved on one local Ray."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")
LAYOUTS = {
    "padded": ["data.layout=padded"],
    "packed": ["data.layout=packed"],
    "prefix": ["data.layout=prefix_shared"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="runs per rank count, interleaved")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--layouts", nargs="+", default=["padded"], choices=list(LAYOUTS))
    args = parser.parse_args()

    import ray

    from dpo_ray.campaign.inputs import offline_inputs
    from dpo_ray.campaign.offline import OfflineCampaign
    from dpo_ray.compose import compose

    ray.init(num_cpus=max(4, max(args.ranks)), include_dashboard=False, log_to_driver=False)
    base = compose(["progress=false", f"train.epochs={args.epochs}", "reference.cache=false"])
    inputs = offline_inputs(base)
    tokens_per_step = sum(p.tokens for p in inputs.train) / len(inputs.train) * base.train.batch_size
    rows = {(r, lay): [] for r in args.ranks for lay in args.layouts}
    for _ in range(args.repeats):
        for ranks, layout in rows:
            cfg = compose(
                [
                    "progress=false",
                    f"train.epochs={args.epochs}",
                    "reference.cache=false",
                    f"cluster.policy_ranks={ranks}",
                    f"output_dir={tempfile.mkdtemp(prefix='bench-')}",
                    *LAYOUTS[layout],
                ]
            )
            began = time.perf_counter()
            result = OfflineCampaign(cfg, inputs).run()
            rows[ranks, layout].append(
                (result.step_seconds[1:], time.perf_counter() - began, result.after["eval_loss"])
            )  # step 1 warms up
    ray.shutdown()
    print(
        f"\nembedded task: {len(inputs.train)} train pairs, batch {base.train.batch_size} pairs "
        f"(~{tokens_per_step:.0f} tokens), {os.cpu_count()} CPUs\n"
    )
    print("| policy ranks | layout | median step s | p90 step s | pairs/s | tokens/s | run wall s | final eval_loss |")
    print("|---|---|---|---|---|---|---|---|")
    for (ranks, layout), runs in rows.items():
        steps = sorted(s for run, _, _ in runs for s in run)
        median, p90 = statistics.median(steps), steps[int(0.9 * (len(steps) - 1))]
        wall = statistics.median(w for _, w, _ in runs)
        print(
            f"| {ranks} | {layout} | {median:.3f} | {p90:.3f} | {base.train.batch_size / median:.0f} | "
            f"{tokens_per_step / median:.0f} | {wall:.1f} | {runs[0][2]:.4f} |"
        )


if __name__ == "__main__":
    main()
