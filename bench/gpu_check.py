"""GPU check kit: the CUDA paths of training, in one process, in minutes (no Ray, no vLLM; DeepSpeed as a wheel).

    python bench/gpu_check.py --out gpu_check            # on a GPU: a ~0.5B Qwen2.5-shaped Llama in bf16
    python bench/gpu_check.py --device cpu --tiny --out x  # every step on a tiny model, in seconds (run by the tests)

Writes DIR/gpu_check.json and DIR/gpu_check.md:
1. numerics: bf16 log-probs per layout against an fp32 forward, and the step-0 log-ratio (policy and reference
   scoring the same micro-batch, as dpo-ray arranges), which must be exactly 0;
2. layouts: padded, packed and prefix-shared log-probs agree, and their forward+backward seconds (sdpa; flash-attention
   too when it imports);
3. one ZeRO-3 rank on the device's collective backend (NCCL on GPU): an SGD step in fp32 equals a plain torch step on
   the same batch; the DeepSpeed offload settings are accepted (GPU only);
4. throughput: tokens/s and MFU against a matmul peak measured in the same run and dtype (bf16 on GPU, fp32 on CPU),
   at 8 and 32 pairs per step, with and without gradient checkpointing; the FLOPs count the vocabulary head on the
   scored (completion) tokens only, as dpo-ray's head computes it;
5. head: the scoring head's forward+backward over Llama-3-8B's vocabulary (128256 x 4096) on 4096 scored tokens in
   bf16, its matmuls on the bf16 operands (dpo-ray's) against the same operands cast to fp32 first (the path before,
   without tensor cores), with the log-prob gap between the two.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LAYOUTS = ("padded", "packed", "prefix_shared")


def model_config(tiny: bool):
    from transformers import LlamaConfig

    if tiny:
        sizes = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
        sizes.update(num_attention_heads=4, num_key_value_heads=2)
    else:  # Qwen2.5-0.5B's shape
        sizes = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24)
        sizes.update(num_attention_heads=14, num_key_value_heads=2)
    return LlamaConfig(**sizes, max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=1e6)


def build_model_dir(tiny: bool, out_dir: Path) -> Path:
    """Random weights (fp32 on disk) and a small tokenizer: only the numbers and times are read."""
    import torch
    from transformers import LlamaForCausalLM

    from dpo_ray.tasks.embedded import build_tokenizer

    torch.manual_seed(0)
    LlamaForCausalLM(model_config(tiny)).save_pretrained(out_dir, safe_serialization=True)
    build_tokenizer([f"{n} is a number" for n in range(200)]).save_pretrained(out_dir)
    return out_dir


def make_pairs(n: int, tokens: int, vocab: int, seed: int):
    """n pairs of about `tokens` tokens per prompt + response (prompt 1/2 of it, responses 1/4-1/2)."""
    from dpo_ray.data.tokenize import TokenizedPair

    rng = random.Random(seed)
    ids = lambda k: tuple(rng.randrange(10, vocab) for _ in range(k))  # noqa: E731
    half = max(2, tokens // 2)
    return [
        TokenizedPair(ids(half), ids(rng.randint(half // 2, half)), ids(rng.randint(half // 2, half))) for _ in range(n)
    ]


def load(model_dir: Path, dtype, device, attention: str = "sdpa"):
    from dpo_ray.logprobs import install_scoring_head
    from dpo_ray.workers.models import load_causal_lm

    model = load_causal_lm(str(model_dir), dtype, attention).to(device)
    install_scoring_head(model)
    return model


def logps(model, pairs, layout: str, dtype, device, attention: str = "sdpa"):
    import torch

    from dpo_ray.data.collate import collate_pairs, make_layout, to_device
    from dpo_ray.logprobs import forward_pairs

    batch = collate_pairs(pairs, 0, make_layout(layout, 256, attention), dtype)
    with torch.no_grad():
        out = forward_pairs(model, to_device(batch, device))
    return torch.cat([out.chosen_logps, out.rejected_logps]).float().cpu()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def numerics_and_layouts(model_dir: Path, pairs, device, attentions: list[str]) -> dict:
    import torch

    exact = logps(load(model_dir, torch.float32, device), pairs, "padded", torch.float32, device)
    result: dict = {"per_sequence_logp_fp32_mean": exact.mean().item()}
    for attention in attentions:
        model = load(model_dir, torch.bfloat16, device, attention)
        padded = None
        for layout in LAYOUTS:
            if attention != "sdpa" and layout == "prefix_shared":
                continue  # flash-attention takes no mask: dpo-ray falls back to packed
            key = f"{attention}/{layout}"
            policy = logps(model, pairs, layout, torch.bfloat16, device, attention)
            reference = logps(model, pairs, layout, torch.bfloat16, device, attention)
            padded = policy if padded is None else padded
            result[key] = {
                "max_abs_vs_fp32": (policy - exact).abs().max().item(),
                "max_abs_vs_padded_bf16": (policy - padded).abs().max().item(),
                "step0_log_ratio_max_abs": (policy - reference).abs().max().item(),
                "fwd_bwd_s": fwd_bwd_seconds(model, pairs, layout, device, attention),
            }
    return result


def fwd_bwd_seconds(model, pairs, layout: str, device, attention: str, repeats: int = 3) -> float:
    import torch

    from dpo_ray.data.collate import collate_pairs, make_layout, to_device
    from dpo_ray.logprobs import forward_pairs

    batch = collate_pairs(pairs, 0, make_layout(layout, 1024, attention), torch.bfloat16)
    batch = to_device(batch, device)
    times = []
    for _ in range(repeats + 1):  # the first is warm-up
        sync(device)
        began = time.perf_counter()
        out = forward_pairs(model, batch)
        (out.chosen_logps.sum() - out.rejected_logps.sum()).backward()
        sync(device)
        times.append(time.perf_counter() - began)
        model.zero_grad(set_to_none=True)
    return min(times[1:])


def zero3_step(model_dir: Path, pairs, on_gpu: bool, work: Path) -> dict:
    """One ZeRO-3 rank (world size 1) against the same SGD step by hand, fp32: the step must match."""
    import torch
    import torch.nn.functional as F

    from dpo_ray.config import RunConfig
    from dpo_ray.data.batches import MicroBatch, step_scale
    from dpo_ray.data.collate import collate_pairs, to_device
    from dpo_ray.logprobs import forward_pairs
    from dpo_ray.workers.distributed import free_port
    from dpo_ray.workers.memory_estimate import policy_rank, policy_shape
    from dpo_ray.workers.policy import PolicyWorker

    device = torch.device("cuda" if on_gpu else "cpu")
    cfg = RunConfig()
    cfg.cluster.gpus_per_rank, cfg.model.dtype, cfg.cache_dir = (1 if on_gpu else 0), "float32", str(work / "cache")
    cfg.train.optimizer, cfg.train.lr, cfg.train.max_grad_norm = "sgd", 0.1, 0.0
    cfg.train.lr_scheduler, cfg.train.warmup_steps, cfg.algo.rpo_alpha = "constant", 0.0, 0.0
    reference = ([-30.0] * len(pairs), [-30.0] * len(pairs))

    plain = load(model_dir, torch.float32, device)
    out = forward_pairs(plain, to_device(collate_pairs(pairs, 0), device))
    ref_c, ref_r = (torch.tensor(r, device=device) for r in reference)
    margin = (out.chosen_logps - ref_c) - (out.rejected_logps - ref_r)
    loss = -F.logsigmoid(cfg.algo.beta * margin).mean()
    loss.backward()
    with torch.no_grad():
        for p in plain.parameters():
            p -= cfg.train.lr * p.grad

    results = {}
    for name, offload in (("zero3", "none"), ("zero3_offload_cpu", "cpu")):
        if offload != "none" and not on_gpu:
            results[name] = "skipped: offload is a GPU setting"
            continue
        cfg.deepspeed.offload_optimizer = cfg.deepspeed.offload_param = offload
        worker = PolicyWorker(cfg, 0, 1, str(model_dir), total_steps=1, accumulation=1)
        try:
            worker.start("127.0.0.1", free_port())
        except Exception as error:  # an op DeepSpeed cannot build on this machine is a finding, not the end
            results[name] = f"failed: {type(error).__name__}: {str(error)[:300]}"
            continue
        began = time.perf_counter()
        metrics = worker.train_step([MicroBatch(pairs, *reference)], step_scale(pairs))
        seconds = time.perf_counter() - began
        grown = worker.memory_growth()
        state = worker.full_state_dict()
        expected = plain.state_dict()
        gap = max((state[k].float().cpu() - expected[k].float().cpu()).abs().max().item() for k in expected)
        results[name] = {"loss": metrics["loss"], "plain_loss": loss.item(), "max_param_gap": gap, "step_s": seconds}
        # dpo-ray plan's estimate of the rank's model states and ZeRO buffers, against the peak the step reached
        estimate = policy_rank(cfg, policy_shape(cfg, str(model_dir)), 1, 3)
        parts = estimate.device if on_gpu else estimate.host
        margins = ("activations", "log-prob chunk", "process", "CUDA context, NCCL, allocator", "fragmentation")
        results[name]["plan_estimate_gb"] = sum(p.bytes for p in parts if p.name not in margins) / 1e9
        results[name]["measured_peak_gb"] = grown["device_peak" if on_gpu else "host_peak_growth"] / 1e9
        worker.engine.destroy()
    return results


def matmul_peak(device, dtype, size: int) -> float:
    """FLOP/s of a square matmul, the best of a few."""
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = math.inf
    for _ in range(6):
        sync(device)
        began = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - began)
    return 2 * size**3 / best


def throughput(model_dir: Path, tiny: bool, device, dtype, peak: float) -> list[dict]:

    from dpo_ray.data.collate import collate_pairs, make_layout, to_device
    from dpo_ray.logprobs import forward_pairs

    model = load(model_dir, dtype, device).train()  # transformers checkpoints only in training mode
    params = sum(p.numel() for p in model.parameters())
    head = model.config.vocab_size * model.config.hidden_size  # tied: the embedding is a lookup, the head a matmul
    tokens_per_pair = 64 if tiny else 1024
    rows = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable()
        for per_step in (8, 32):
            pairs = make_pairs(per_step, tokens_per_pair, model.config.vocab_size, seed=per_step)
            micro = [pairs[i : i + 8] for i in range(0, per_step, 8)]
            batches = [collate_pairs(m, 0, make_layout("prefix_shared", 4096, "sdpa"), dtype) for m in micro]
            times = []
            for _ in range(3):  # the first is warm-up
                sync(device)
                began = time.perf_counter()
                for batch in batches:
                    out = forward_pairs(model, to_device(batch, device))
                    (out.chosen_logps.sum() - out.rejected_logps.sum()).backward()
                sync(device)
                times.append(time.perf_counter() - began)
                model.zero_grad(set_to_none=True)
            seconds = min(times[1:])
            tokens = sum(p.tokens for p in pairs)
            scored = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
            flops = 6 * (params - head) * tokens + 6 * head * scored  # forward + backward, attention not counted
            rows.append(
                {
                    "pairs_per_step": per_step,
                    "gradient_checkpointing": checkpointing,
                    "tokens": tokens,
                    "seconds": seconds,
                    "tokens_per_s": tokens / seconds,
                    "mfu": flops / seconds / peak,
                }
            )
    return rows


def head_matmuls(tiny: bool, device) -> dict:
    """The scoring head in bf16 over a large vocabulary: its matmuls on the bf16 operands against the fp32-cast ones."""
    import torch

    from dpo_ray.logprobs import TokenLogProbs

    tokens, vocab, hidden = (256, 512, 64) if tiny else (4096, 128256, 4096)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, hidden, generator=gen).to(device, torch.bfloat16)
    w = (torch.randn(vocab, hidden, generator=gen) / hidden**0.5).to(device, torch.bfloat16)
    targets = torch.randint(0, vocab, (tokens,), generator=gen).to(device)
    chunk_rows = max(1, (256 << 20) // (4 * (hidden + 3 * tokens)))  # the ScoringHead's default budget
    result = {"tokens": tokens, "vocab": vocab, "hidden": hidden}
    logps = {}
    for name, dtype in (("bf16_operands", torch.bfloat16), ("fp32_operands", torch.float32)):
        hidden_x, weight_x = h.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()
        times = []
        for _ in range(4):  # the first is warm-up
            sync(device)
            began = time.perf_counter()
            out = TokenLogProbs.apply(hidden_x, weight_x, None, targets, chunk_rows, 1.0, None)[0]
            out.sum().backward()
            sync(device)
            times.append(time.perf_counter() - began)
        logps[name] = out.detach().double().cpu()
        result[f"{name}_fwd_bwd_s"] = min(times[1:])
    result["speedup"] = result["fp32_operands_fwd_bwd_s"] / result["bf16_operands_fwd_bwd_s"]
    result["max_abs_logp_gap"] = (logps["bf16_operands"] - logps["fp32_operands"]).abs().max().item()
    return result


def markdown(report: dict) -> str:
    peak = f"{report['peak_dtype']} matmul peak {report['peak_tflops']:.2f} TFLOP/s"
    lines = [f"device: {report['device']}, model: {report['model']}, {peak}, {report['seconds']:.0f} s in all", ""]
    lines += ["| check | max abs vs fp32 | max abs vs padded | step-0 log-ratio | fwd+bwd s |", "|---|---|---|---|---|"]
    for key, row in report["numerics"].items():
        if isinstance(row, dict):
            lines.append(
                f"| {key} | {row['max_abs_vs_fp32']:.3g} | {row['max_abs_vs_padded_bf16']:.3g} "
                f"| {row['step0_log_ratio_max_abs']:.3g} | {row['fwd_bwd_s']:.3f} |"
            )
    lines += [
        "",
        "| ZeRO-3 rank | loss | plain loss | max param gap | step s | plan estimate GB | measured peak GB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in report["zero3"].items():
        if isinstance(row, dict):
            lines.append(
                f"| {name} | {row['loss']:.6f} | {row['plain_loss']:.6f} | {row['max_param_gap']:.2g} "
                f"| {row['step_s']:.2f} | {row['plan_estimate_gb']:.3f} | {row['measured_peak_gb']:.3f} |"
            )
        else:
            lines.append(f"| {name} | {row} | | | | | |")
    lines += ["", "| pairs/step | grad ckpt | tokens | s | tokens/s | MFU |", "|---|---|---|---|---|---|"]
    for row in report["throughput"]:
        lines.append(
            f"| {row['pairs_per_step']} | {row['gradient_checkpointing']} | {row['tokens']} | {row['seconds']:.3f} "
            f"| {row['tokens_per_s']:.0f} | {row['mfu']:.1%} |"
        )
    head = report.get("head")
    if head:
        lines += [
            "",
            "| head (tokens x vocab x hidden) | bf16 operands s | fp32 operands s | speed-up | max log-prob gap |",
            "|---|---|---|---|---|",
            f"| {head['tokens']} x {head['vocab']} x {head['hidden']} | {head['bf16_operands_fwd_bwd_s']:.4f} "
            f"| {head['fp32_operands_fwd_bwd_s']:.4f} | {head['speedup']:.2f}x | {head['max_abs_logp_gap']:.2g} |",
        ]
    for name, error in report.get("errors", {}).items():
        lines += ["", f"{name} failed: {error.strip().splitlines()[-1]}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 0.1M-parameter model and short pairs")
    parser.add_argument("--out", default="gpu_check")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")

    import torch

    began = time.perf_counter()
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = build_model_dir(args.tiny, work / "model")
        vocab = model_config(args.tiny).vocab_size
        pairs = make_pairs(8, 48 if args.tiny else 512, vocab, seed=0)
        attentions = ["sdpa"]
        if args.device == "cuda":
            try:
                import flash_attn  # noqa: F401

                attentions.append("flash_attention_2")
            except ImportError:
                pass
        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32  # CPUs here emulate bf16 matmuls
        peak = matmul_peak(device, dtype, 1024 if args.tiny else 8192)
        report = {
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "model": "tiny Llama" if args.tiny else "Qwen2.5-0.5B-shaped Llama (random weights)",
            "peak_dtype": str(dtype).removeprefix("torch."),
            "peak_tflops": peak / 1e12,
            "numerics": {},
            "zero3": {},
            "throughput": [],
        }
        sections = {
            "numerics": lambda: numerics_and_layouts(model_dir, pairs, device, attentions),
            "zero3": lambda: zero3_step(model_dir, pairs[:4], args.device == "cuda", work),
            "throughput": lambda: throughput(model_dir, args.tiny, device, dtype, peak),
            "head": lambda: head_matmuls(args.tiny, device),
        }
        for name, run in sections.items():  # one machine lease, one try: a failed section must not lose the others
            try:
                report[name] = run()
            except Exception:
                report.setdefault("errors", {})[name] = traceback.format_exc()[-2000:]
                print(report["errors"][name], flush=True)
            report["seconds"] = time.perf_counter() - began
            (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
            (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    print(f"{report['seconds']:.0f} s; written to {out}/gpu_check.json and gpu_check.md")
    if report.get("errors"):
        raise SystemExit(f"sections failed: {', '.join(report['errors'])}")


if __name__ == "__main__":
    main()
