"""The reward-vs-KL frontier of the IMDb campaign by beta (run by hand: .venv/bin/python bench/imdb_frontier.py).

Runs `dpo-ray online +experiment=imdb_sentiment algo.beta=B` for each beta, one after the other (each its own process
and local Ray; 574-591 s each on 2 CPU cores on 2026-12-05), then plots every run's held-out sampled reward against
its KL to the reference, a point per round, on one axis (the DPO paper's controlled-sentiment figure), with the KL
monitor's limit, and prints a Markdown table. --plot-only redraws from runs already in --runs."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    parser.add_argument("--runs", default="runs/imdb_frontier", help="one output_dir per beta goes under this")
    parser.add_argument("--plot", default="docs/results/imdb-frontier.png")
    parser.add_argument("--plot-only", action="store_true", help="draw from the runs already under --runs")
    parser.add_argument("overrides", nargs="*", help="further config overrides, as for dpo-ray online")
    args = parser.parse_args()
    runs = {beta: Path(args.runs) / f"beta-{beta:g}" for beta in args.betas}
    for beta, run_dir in runs.items():
        if args.plot_only:
            continue
        began = time.perf_counter()
        command = [sys.executable, "-m", "dpo_ray.cli", "online", "+experiment=imdb_sentiment", f"algo.beta={beta}"]
        subprocess.run([*command, f"output_dir={run_dir}", "resume=never", *args.overrides], check=True)
        print(f"beta {beta:g}: {time.perf_counter() - began:.0f} s", flush=True)

    from dpo_ray.compose import compose
    from dpo_ray.report.plots import frontiers_plot

    kl_max = compose(["+experiment=imdb_sentiment"], "online").monitor.kl_max
    rounds = {beta: read_rounds(run_dir) for beta, run_dir in runs.items()}
    print(
        f"\n| beta | round | KL (nats/response) | held-out sampled reward | held-out greedy reward | KL <= {kl_max:g} |"
    )
    print("|---|---|---|---|---|---|")
    for beta, rows in rounds.items():
        for row in rows:
            kl, sampled, greedy = (
                row.get(k, math.nan) for k in ("eval/kl", "eval/sampled_reward", "eval/greedy_reward")
            )
            within = "yes" if kl <= kl_max else "no"
            print(f"| {beta:g} | {row['round']} | {kl:.1f} | {sampled:.3f} | {greedy:.3f} | {within} |")
    path = frontiers_plot([(f"beta {b:g}", rows) for b, rows in rounds.items()], Path(args.plot), kl_max)
    print(f"\nplot: {path}")


def read_rounds(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    main()
