"""Frozen vs per-round reference (online.reference_update), side by side (run by hand).

Runs `dpo-ray online` once per run spec, one after the other (each its own process and local Ray), then prints a
table per round (held-out sampled and greedy reward, KL to the starting reference, KL to the round's own; with a
held-out judge, eval.*, the win rate against the starting policy and its length-controlled twin, with 95% intervals)
and draws every run's held-out reward against its KL to the start on one frontier plot. A spec is MODE or MODE:BETA:

    .venv/bin/python bench/reference_update.py online.rounds=3 eval.judge_fn=dpo_ray.tasks.number_words:judge
    .venv/bin/python bench/reference_update.py --specs frozen:0.5 each_round:0.5 each_round:1 \
        --runs runs/reference_update_imdb --plot docs/results/reference-update-imdb.png +experiment=imdb_sentiment
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

KEYS = ("eval/sampled_reward", "eval/greedy_reward", "eval/kl", "eval/kl_to_round_reference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", nargs="+", default=["frozen", "each_round"], help="MODE or MODE:BETA, one run each")
    parser.add_argument("--runs", default="runs/reference_update", help="one output_dir per spec goes under this")
    parser.add_argument("--plot", default="", help="where to draw the frontier (none when empty)")
    parser.add_argument("--plot-only", action="store_true", help="read the runs already under --runs")
    parser.add_argument("overrides", nargs="*", help="further config overrides, as for dpo-ray online")
    args = parser.parse_args()
    runs = {spec: Path(args.runs) / spec.replace(":", "-beta-") for spec in args.specs}
    for spec, run_dir in runs.items():
        if args.plot_only:
            continue
        mode, _, beta = spec.partition(":")
        began = time.perf_counter()
        command = [sys.executable, "-m", "dpo_ray.cli", "online", *args.overrides, f"online.reference_update={mode}"]
        command += [f"algo.beta={beta}"] if beta else []
        subprocess.run([*command, f"output_dir={run_dir}", "resume=never", "progress=false"], check=True)
        print(f"{spec}: {time.perf_counter() - began:.0f} s", flush=True)

    rounds = {spec: read_rounds(run_dir) for spec, run_dir in runs.items()}
    judged = any("eval/win_rate" in row for rows in rounds.values() for row in rows)
    header = ["run", "round", "held-out sampled reward", "held-out greedy reward", "KL to start", "KL to round's ref"]
    header += ["win rate [95%]", "length-controlled [95%]", "length ratio"] if judged else []
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for spec, rows in rounds.items():
        for row in rows:
            sampled, greedy, kl, kl_round = (row.get(k, math.nan) for k in KEYS)
            cells = [spec, str(row["round"]), f"{sampled:.3f}", f"{greedy:.3f}", f"{kl:.2f}", number(kl_round)]
            if judged:
                cells += [interval(row, "eval/win_rate"), interval(row, "eval/length_controlled_win_rate")]
                cells.append(number(row.get("eval/length_ratio", math.nan)))
            print("| " + " | ".join(cells) + " |")
    if args.plot:
        from dpo_ray.compose import compose
        from dpo_ray.report.plots import frontiers_plot

        kl_max = compose(args.overrides, "online").monitor.kl_max
        path = frontiers_plot([(spec, rows) for spec, rows in rounds.items()], Path(args.plot), kl_max)
        print(f"\nplot: {path}")


def number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.2f}"


def interval(row: dict, key: str) -> str:
    """'0.72 [0.68, 0.76]', or '' for a round without it (round 0 plays no baseline of its own)."""
    if key not in row:
        return ""
    return f"{row[key]:.3f} [{row[key + '_low']:.3f}, {row[key + '_high']:.3f}]"


def read_rounds(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    main()
