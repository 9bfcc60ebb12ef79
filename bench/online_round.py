"""Where the time of an online round goes (run by hand: .venv/bin/python bench/online_round.py).

Runs an online campaign on the embedded task through the real path (local Ray, vLLM engine, reward group, ZeRO-3
policy, reference replicas) and prints each round's phases in seconds and percent of the round, the round overhead
(everything but generate and train) and the weight-sync share; then the same generation (same prompts, n and
max_tokens) done by HF `generate` in this process, for comparison with the vLLM engine."""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="config overrides, as for dpo-ray online")
    args = parser.parse_args()

    from dpo_ray.campaign.online import PHASES, OnlineCampaign
    from dpo_ray.compose import compose

    cfg = compose(
        [
            "progress=false",
            f"online.rounds={args.rounds}",
            "reference.cache=false",
            f"output_dir={tempfile.mkdtemp(prefix='bench-online-')}",
            *args.overrides,
        ],
        "online",
    )
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


if __name__ == "__main__":
    main()
