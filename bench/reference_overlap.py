"""The reference group's pass read while the policy trains, against waited for before training (run by hand:
.venv/bin/python bench/reference_overlap.py [--repeats 2] [overrides...]).

The same online campaign (the embedded task unless overrides say otherwise; a reference group of its own, as every
full fine-tune has) run alternately with the reference's log-probs waited for before the first step (as before
reference_stream.py, forced here by passing stream=False) and streamed, in one process, one sitting. Prints per mode
the median over repeats of each round's reference + train seconds, its eval seconds (whose KL pass now runs beside
the reward scoring) and its whole seconds, how much of the reference pass ran while the policy trained, and whether
every number of the rounds but the timings is the same in both modes. --pin puts the reference group's processes on
CPU 0 and the policy's on the others, as groups on devices of their own are; unpinned, they share every core."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--pin", action="store_true", help="the reference's processes on CPU 0, the policy's on the rest"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides, as for dpo-ray online")
    args = parser.parse_args()

    from dpo_ray.campaign.online import OnlineCampaign
    from dpo_ray.campaign.reference import ReferenceScorer
    from dpo_ray.compose import compose

    streamed_logps = ReferenceScorer.logps

    def waited_logps(self, *args, stream=False, **kwargs):
        return streamed_logps(self, *args, **kwargs)

    results: dict[str, list[list[dict]]] = {"waited for": [], "streamed": []}
    for _ in range(args.repeats):
        for mode in results:
            ReferenceScorer.logps = waited_logps if mode == "waited for" else streamed_logps
            out = tempfile.mkdtemp(prefix="bench-reference-overlap-")
            overrides = ["progress=false", f"online.rounds={args.rounds}", "reference.cache=false", f"output_dir={out}"]
            cfg = compose([*overrides, *args.overrides], "online")
            campaign = pinned_campaign() if args.pin else OnlineCampaign
            results[mode].append(campaign(cfg).run().rounds[1:])
    ReferenceScorer.logps = streamed_logps

    where = "reference on CPU 0, policy on the rest" if args.pin else "all groups share every CPU"
    overrides = " ".join(args.overrides) or "(none)"
    print(f"\n{args.rounds} rounds, {args.repeats} repeats each, alternated; {where}; overrides: {overrides}\n")
    print("| reference pass | round | pairs | reference + train s | eval s | round s | pass beside training |")
    print("|---|---|---|---|---|---|---|")
    for mode, runs in results.items():
        for k, row in enumerate(runs[0]):
            rows = [run[k] for run in runs]
            both = statistics.median(r["time/reference"] + r["time/train"] for r in rows)
            evaluation = statistics.median(r["time/eval"] for r in rows)
            whole = statistics.median(r["time/round"] for r in rows)
            beside = statistics.median(overlap_share(r["timeline"]) for r in rows)
            print(
                f"| {mode} | {row['round']} | {row['pairs']} | {both:.2f} | {evaluation:.2f} | {whole:.2f} "
                f"| {100 * beside:.0f}% |"
            )
    same = all(numbers(a) == numbers(b) for runs in zip(*results.values()) for a, b in zip(*runs))
    print(f"\nrounds' numbers (all but timings) the same in every run of both modes: {same}")


def pinned_campaign():
    """OnlineCampaign whose reference group is pinned to CPU 0 and policy group to the other CPUs once started."""
    from online_round import pin_processes

    from dpo_ray.campaign.online import OnlineCampaign

    class Pinned(OnlineCampaign):
        def _start_groups(self, started):
            groups = super()._start_groups(started)
            pin_processes(groups.reference.group.group.actors, {0})
            pin_processes(groups.policy.group.actors, set(range(1, os.cpu_count() or 2)))
            return groups

    return Pinned


def overlap_share(timeline: list[list]) -> float:
    """The share of the reference group's pass that ran during the train phase (0 when it was waited for)."""
    spans = {name: (start, end) for name, start, end in timeline}
    if "reference pass" not in spans:
        return 0.0
    (ref_start, ref_end), (train_start, train_end) = spans["reference pass"], spans["train"]
    beside = max(0.0, min(ref_end, train_end) - max(ref_start, train_start))
    return beside / max(ref_end - ref_start, 1e-9)


def numbers(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("time/") and k != "timeline"}


if __name__ == "__main__":
    main()
