"""Long sequences: Ulysses sequence parallelism on CPU, and the plan at 8B and 70B (run by hand:
.venv/bin/python bench/long_sequences.py).

1. One causal sequence of 1k, 4k and 16k tokens through a small Llama (hidden 256, 4 layers, 8 heads, 2 key-value
   heads), forward and backward, on one rank with 2 threads (SP 1) and on 2 gloo ranks of 1 thread each sharing the
   sequence (SP 2): per rank, the bytes autograd saves for backward, the peak RSS growth over the model's (VmHWM, each
   run in fresh processes), and the step's seconds (best of 2 after a warm-up), each also with its MLPs in 8 tiles
   (model.mlp_tiles=8). No mask: sdpa's causal kernel, as flash-attention runs a long sequence.
2. `dpo-ray plan`'s policy rank at 32768 tokens for Llama-3-8B (8 x 80 GB, gradient checkpointing) and Llama-3-70B
   (8 nodes x 8 x 80 GB, the multi_node_70b preset on 32 ranks), sequence_parallel_size 1 and 2, MLPs whole and in
   16 tiles (config.json alone)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE = dict(
    vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
    num_key_value_heads=2, max_position_embeddings=32768,
)  # fmt: skip
LLAMA_70B = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=8192, intermediate_size=28672,
    num_attention_heads=64, num_hidden_layers=80, num_key_value_heads=8, vocab_size=128256,
    max_position_embeddings=8192, tie_word_embeddings=False,
)  # fmt: skip
LLAMA_8B = dict(LLAMA_70B, hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_hidden_layers=32)


def peak_rss() -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) * 1024


def rss() -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) * 1024


def rank_main(rank: int, size: int, port: int, length: int, tiles: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    from dpo_ray.attention import install
    from dpo_ray.sequence_parallel import shard_inputs
    from dpo_ray.tiled_mlp import tile_mlps
    from tests.saved_tensors import saved_for_backward

    torch.set_num_threads(2 // size)
    group = None
    if size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=size)
        group = dist.new_group(list(range(size)))
        install("sdpa")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(attn_implementation="sdpa", **SHAPE)).train()
    if tiles:
        tile_mlps(model, tiles)
    inputs = {"input_ids": torch.randint(0, 512, (1, length)), "position_ids": torch.arange(length)[None]}
    if group is not None:
        inputs = shard_inputs(inputs, group)
    before, times, outputs = rss(), [], []
    for _ in range(3):  # a warm-up, then the best of 2
        began = time.perf_counter()
        saved = saved_for_backward(model, lambda: outputs.append(model.model(**inputs, use_cache=False)))
        outputs.pop().last_hidden_state.float().pow(2).mean().backward()
        if group is not None:
            dist.barrier(group)
        times.append(time.perf_counter() - began)
        model.zero_grad(set_to_none=True)
    result = {"saved": saved, "peak_growth": peak_rss() - before, "seconds": min(times[1:])}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    if group is not None:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(length: int, size: int, tiles: int) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        args = (size, free_port(), length, tiles, out)
        mp.start_processes(rank_main, args=args, nprocs=size, start_method="spawn")
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(size)]
    return {k: max(r[k] for r in ranks) for k in ranks[0]}


def plans() -> list[tuple[str, int, str]]:
    """(model, sequence_parallel_size, the policy rank's GPU line and the verdict) from dpo-ray plan."""
    from dpo_ray.compose import compose
    from dpo_ray.planning.nodes import described_nodes
    from dpo_ray.planning.plan import PlanModels, make_plan

    rows = []
    with tempfile.TemporaryDirectory() as root:
        runs = {
            "Llama-3-8B": (LLAMA_8B, ["cluster=single_node_8gpu", "model.gradient_checkpointing=true"], 1),
            "Llama-3-70B": (LLAMA_70B, ["cluster=multi_node_70b", "cluster.nodes=8", "cluster.policy_ranks=32"], 8),
        }
        for name, (config, overrides, nodes) in runs.items():
            path = Path(root, name)
            path.mkdir()
            (path / "config.json").write_text(json.dumps(config))
            for sp, tiles in ((1, 0), (2, 0), (1, 16), (2, 16)):
                cfg = compose(
                    [
                        f"model.path={path}",
                        *overrides,
                        "train.micro_batch_size=1",
                        "data.max_length=32768",
                        f"cluster.sequence_parallel_size={sp}",
                        f"model.mlp_tiles={tiles}",
                    ],
                    "train",
                )
                plan = make_plan(
                    cfg, "train", described_nodes(nodes, 8, 80, 128, 2048), PlanModels(str(path), str(path)), ""
                )
                policy = next(g for g in plan.groups if g.need.name == "policy")
                parts = {p.name: p.bytes / 2**30 for p in policy.memory.device}
                rows.append((name, sp, tiles, parts, policy.memory.device_peak / 2**30, plan.fits))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    args = parser.parse_args()
    print("| tokens | SP | MLP tiles | saved for backward MiB | peak RSS growth MiB | step s | vs 1 rank, whole MLP |")
    print("|---|---|---|---|---|---|---|")
    for length in args.lengths:
        one = measure(length, 1, 0)
        for size, tiles in ((1, 0), (2, 0), (1, 8), (2, 8)):
            got = one if (size, tiles) == (1, 0) else measure(length, size, tiles)
            ratio = f"{got['saved'] / one['saved']:.2f}x memory, {got['seconds'] / one['seconds']:.2f}x time"
            print(
                f"| {length} | {size} | {tiles or '-'} | {got['saved'] / 2**20:.0f} | {got['peak_growth'] / 2**20:.0f} "
                f"| {got['seconds']:.2f} | {ratio} |"
            )
    print()
    print("| model | SP | MLP tiles | activations GiB | all-to-all + MLP tile GiB | policy GPU GiB (of 80) | fits |")
    print("|---|---|---|---|---|---|---|")
    for name, sp, tiles, parts, peak, fits in plans():
        extra = parts.get("sequence all-to-all", 0.0) + parts.get("MLP tile", 0.0)
        print(
            f"| {name} | {sp} | {tiles or '-'} | {parts['activations']:.2f} | {extra:.2f} | {peak:.1f} "
            f"| {'yes' if fits else 'no'} |"
        )


if __name__ == "__main__":
    main()
