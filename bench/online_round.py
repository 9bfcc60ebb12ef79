"""Where the time of an online round goes (run by hand: .venv/bin/python bench/online_round.py).

Runs an online campaign on the embedded task through the real path (local Ray, vLLM engine, reward group, ZeRO-3
policy, reference replicas) and prints each round's phases in seconds and percent of the round, the round overhead
(everything but generate and train) and the weight-sync share; then the same generation (same prompts, n and
max_tokens) done by HF `generate` in this process, for comparison with the vLLM engine. With --async: the same
campaign synchronous and with asynchronous rounds, side by side."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--async",
        dest="async_rounds",
        action="store_true",
        help="a synchronous and an asynchronous campaign (online.async_rounds), one after the other: rounds per hour, "
        "held-out reward and each one's round timeline (--plots)",
    )
    parser.add_argument("--plots", default=".", help="with --async: where the two timeline PNGs go")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="with --async: the engines' processes on CPU 0, the other groups' on the rest, as groups on devices of "
        "their own (GPUs) are; unpinned, both sides share every core",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides, as for dpo-ray online")
    args = parser.parse_args()
    if args.async_rounds:
        compare_async(args.rounds, args.overrides, Path(args.plots), args.pin)
        return

    from dpo_ray.campaign.online import OnlineCampaign
    from dpo_ray.campaign.round_phases import PHASES

    cfg = campaign_config(args.rounds, args.overrides)
    campaign = OnlineCampaign(cfg)
    began = time.perf_counter()
    result = campaign.run()
    wall = time.perf_counter() - began
    o = cfg.online
    print(
        f"\nembedded task: {len(campaign.inputs.prompts)} prompts x {o.samples_per_prompt} samples per round, "
        f"{len(campaign.inputs.eval_prompts)} held-out prompts; {cfg.cluster.policy_ranks} policy ranks, "
        f"{cfg.cluster.reference_ranks} reference replicas, {cfg.cluster.rollout_engines} vLLM engine(s), "
        f"{os.cpu_count()} CPUs; campaign wall {wall:.1f} s (start-up included)\n"
    )
    rows = result.rounds[1:]
    print("| phase | " + " | ".join(f"round {r['round']} s | %" for r in rows) + " |")
    print("|---|" + "---|---|" * len(rows))
    for phase in PHASES:
        cells = [f"{r[f'time/{phase}']:.2f} | {100 * r[f'time/{phase}'] / r['time/round']:.1f}" for r in rows]
        print(f"| {phase} | " + " | ".join(cells) + " |")
    overhead = [r["time/round"] - r["time/generate"] - r["time/train"] for r in rows]
    print(
        "| **overhead** (all but generate, train) | "
        + " | ".join(f"{x:.2f} | {100 * x / r['time/round']:.1f}" for x, r in zip(overhead, rows))
        + " |"
    )
    print("| **round** | " + " | ".join(f"{r['time/round']:.2f} | 100" for r in rows) + " |")
    print(
        "\n(pairs per round: "
        + ", ".join(str(r["pairs"]) for r in rows)
        + "; training steps: "
        + ", ".join(str(r["steps"]) for r in rows)
        + ")"
    )

    import torch
    from transformers import AutoModelForCausalLM

    from dpo_ray.tasks.sampling import sample_responses
    from dpo_ray.workers.models import load_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForCausalLM.from_pretrained(campaign.inputs.model_path)
    tokenizer = load_tokenizer(campaign.inputs.model_path)
    prompts = [p[-1]["content"] for p in campaign.inputs.prompts]
    start = time.perf_counter()
    sample_responses(model, tokenizer, prompts, o.samples_per_prompt, o.temperature, max_new_tokens=o.max_tokens)
    hf = time.perf_counter() - start
    vllm = rows[0]["time/generate"]
    print(
        f"\n| generation of round 1 ({len(prompts)} prompts x {o.samples_per_prompt}) | seconds | x HF |\n"
        "|---|---|---|\n"
        f"| HF generate, {torch.get_num_threads()} threads, batch 256 | {hf:.2f} | 1.00 |\n"
        f"| vLLM engine(s) in the rollout group | {vllm:.2f} | {hf / vllm:.2f} |"
    )


def campaign_config(rounds: int, overrides: list[str]):
    from dpo_ray.compose import compose

    return compose(
        [
            "progress=false",
            f"online.rounds={rounds}",
            "reference.cache=false",
            f"output_dir={tempfile.mkdtemp(prefix='bench-online-')}",
            *overrides,
        ],
        "online",
    )


def pin_processes(actors, cpus: set[int]) -> None:
    """Every thread of each actor's process and of its children (vLLM's engine core) onto cpus."""
    import psutil
    import ray

    for actor in actors:
        pid = ray.get(actor.__ray_call__.remote(lambda _: os.getpid()))
        for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            for thread in process.threads():
                os.sched_setaffinity(thread.id, cpus)


def pinned_campaign():
    """OnlineCampaign whose groups are pinned once started: the engines to CPU 0, the rest to the other CPUs."""
    from dpo_ray.campaign.online import OnlineCampaign

    class Pinned(OnlineCampaign):
        def _start_groups(self, started):
            groups = super()._start_groups(started)
            engines, rest = {0}, set(range(1, os.cpu_count() or 2))
            pin_processes(groups.rollout.group.actors, engines)
            others = [g.group for g in (groups.reward, groups.judge, groups.policy) if g is not None]
            others += [groups.reference.group.group] if groups.reference.group is not None else []
            pin_processes([a for g in others for a in g.actors], rest)
            return groups

    return Pinned


def compare_async(rounds: int, overrides: list[str], plots: Path, pin: bool) -> None:
    """The same campaign (prompts, seeds, samples per round) run in turn and with the next round drawn ahead; rounds
    per hour count the rounds' own time (start-up and the round-0 evaluation left out)."""
    from dpo_ray.campaign.online import OnlineCampaign
    from dpo_ray.report.plots import timeline_plot
    from dpo_ray.report.records import RunRecords

    plots.mkdir(parents=True, exist_ok=True)
    if pin:  # the engine's OpenMP pool on its one core: a thread per core of the machine, on one core, crawls (20x)
        os.environ.update(VLLM_CPU_OMP_THREADS_BIND="0", OMP_NUM_THREADS="1")
    campaign, results = pinned_campaign() if pin else OnlineCampaign, {}
    for name, extra in (("sync", []), ("async", ["online.async_rounds=true", "online.max_staleness=1"])):
        cfg = campaign_config(rounds, [*overrides, *extra])
        rows = campaign(cfg).run().rounds
        results[name] = rows
        timeline_plot(RunRecords(Path(cfg.output_dir), rounds=rows), plots / f"timeline-{name}.png")
    where = "engines pinned to CPU 0, other groups to the rest" if pin else "all groups share every CPU"
    print(f"\n{rounds} rounds; {where}; overrides: {' '.join(overrides) or '(none)'}\n")
    print("| mode | rounds/hour | x sync | round seconds | held-out sampled reward | KL | drawn from versions |")
    print("|---|---|---|---|---|---|---|")
    per_hour = {}
    for name, rows in results.items():
        seconds = [row["time/round"] for row in rows[1:]]
        per_hour[name] = 3600 * len(seconds) / sum(seconds)
        last = rows[-1]
        print(
            f"| {name} | {per_hour[name]:.0f} | {per_hour[name] / per_hour['sync']:.2f} "
            f"| {', '.join(f'{s:.1f}' for s in seconds)} | {last.get('eval/sampled_reward', float('nan')):.3f} "
            f"| {last.get('eval/kl', float('nan')):.2f} | {', '.join(str(row['policy_version']) for row in rows[1:])} |"
        )
    print(f"\ntimelines: {plots}/timeline-sync.png, {plots}/timeline-async.png")


if __name__ == "__main__":
    main()
