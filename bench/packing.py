"""Padded vs packed micro-batches, forward+backward (run by hand: .venv/bin/python bench/packing.py).

Data: the embedded task's pairs (nearly uniform lengths), and varied-length pairs (prompts 10-40 tokens, responses
10-60). Models: the embedded 0.42M Llama and a ~25M Llama built on the fly. Prints the
positions computed, the padding fraction, tokens/s counted as the padded layout's real tokens (so rows compare), and
the speed-up over padded; runs are interleaved."""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def step_seconds(model, pairs, layout, micro: int) -> float:
    from dpo_ray.data.collate import collate_pairs
    from dpo_ray.logprobs import forward_pairs

    layout, mask = layout
    began = time.perf_counter()
    for start in range(0, len(pairs), micro):
        batch = collate_pairs(pairs[start : start + micro], 0, layout)
        if not mask:  # right padding needs no mask for a causal model: pads come after every real token
            del batch["attention_mask"]
        out = forward_pairs(model, batch)
        (out.chosen_logps.sum() - out.rejected_logps.sum()).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - began


def positions(pairs, layout, micro: int) -> int:
    from dpo_ray.data.collate import collate_pairs

    return sum(
        collate_pairs(pairs[s : s + micro], 0, layout[0])["input_ids"].numel() for s in range(0, len(pairs), micro)
    )


def padding_fraction(pairs, layout, micro: int) -> float:
    from dpo_ray.data.collate import collate_pairs, unit_length

    real = total = 0
    for start in range(0, len(pairs), micro):
        batch = collate_pairs(pairs[start : start + micro], 0, layout[0])
        real += sum(unit_length(p, layout[0]) for p in pairs[start : start + micro])
        total += batch["input_ids"].numel()
    return 1 - real / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--micro", type=int, default=32, help="pairs per micro-batch")
    parser.add_argument("--pack-lengths", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--pairs", type=int, default=160, help="pairs per data set")
    args = parser.parse_args()
    torch.set_num_threads(2)

    import random

    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from dpo_ray.campaign.inputs import offline_inputs
    from dpo_ray.compose import compose
    from dpo_ray.data.collate import BatchLayout
    from dpo_ray.data.tokenize import TokenizedPair

    inputs = offline_inputs(compose(["progress=false"]))
    tiny = AutoModelForCausalLM.from_pretrained(inputs.model_path)
    rng = random.Random(0)
    ids = lambda lo, hi: tuple(rng.randrange(5, tiny.config.vocab_size) for _ in range(rng.randint(lo, hi)))
    data = {
        "embedded": inputs.train[: args.pairs],
        "varied": [TokenizedPair(ids(10, 40), ids(10, 60), ids(10, 60)) for _ in range(args.pairs)],
    }
    torch.manual_seed(0)
    mid = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=tiny.config.vocab_size,
            hidden_size=512,
            intermediate_size=1408,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=512,
            tie_word_embeddings=True,
        )
    )
    layouts = {
        "padded": (BatchLayout(), True),
        "padded, no mask": (BatchLayout(), False),
        **{f"packed {n}": (BatchLayout("packed", pack_length=n), True) for n in args.pack_lengths},
        **{f"prefix-shared {n}": (BatchLayout("prefix_shared", pack_length=n), True) for n in args.pack_lengths},
    }
    print(f"\n{args.pairs} pairs per data set, micro-batch {args.micro} pairs, {torch.get_num_threads()} threads\n")
    print("| data | model | layout | positions computed | padding | tokens/s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for data_name, pairs in data.items():
        real_tokens = sum(p.tokens for p in pairs)
        for name, model in (("embedded 0.4M", tiny), ("llama 24M", mid)):
            times = {k: [] for k in layouts}
            step_seconds(model, pairs, layouts["padded"], args.micro)  # warm-up
            for _ in range(args.repeats):
                for key, layout in layouts.items():
                    times[key].append(step_seconds(model, pairs, layout, args.micro))
            base = statistics.median(times["padded"])
            for key, layout in layouts.items():
                median = statistics.median(times[key])
                print(
                    f"| {data_name} | {name} | {key} | {positions(pairs, layout, args.micro)} "
                    f"| {padding_fraction(pairs, layout, args.micro):.2f} | "
                    f"{real_tokens / median:.0f} | {base / median:.2f}x |"
                )


if __name__ == "__main__":
    main()
