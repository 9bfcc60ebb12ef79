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
   without tensor cores), with the log-prob gap between the two;
6. precision: the production path, one bf16 AdamW step (fp32 accumulation and master weights) at ZeRO stages 1, 2,
   3 and, on GPU, 3 with DeepSpeed's CPU Adam (built here), on the tiny model against the same step in float64; then
   one bf16 AdamW step of a ~1.2B Llama (Llama-3.2-1B's shape; tiny on CPU) at stage 3: dpo-ray plan's estimate of
   the rank beside its measured peak;
7. stream: the weight sync's bucket stream from a sender to a receiver process over a gloo group of their own, with
   the buckets and tensors on the device (CUDA tensors on GPU), received bit-exact.
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


TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
TINY.update(num_attention_heads=4, num_key_value_heads=2)
QWEN_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24)
QWEN_05B.update(num_attention_heads=14, num_key_value_heads=2)
LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16)  # Llama-3.2-1B
LLAMA_1B.update(num_attention_heads=32, num_key_value_heads=8)


def model_config(tiny: bool, shape: dict = QWEN_05B):
    from transformers import LlamaConfig

    sizes = TINY if tiny else shape
    return LlamaConfig(**sizes, max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=1e6)


def build_model_dir(tiny: bool, out_dir: Path, shape: dict = QWEN_05B, dtype: str = "float32") -> Path:
    """Random weights and a small tokenizer: only the numbers and times are read."""
    import torch
    from transformers import LlamaForCausalLM

    from dpo_ray.tasks.embedded import build_tokenizer

    torch.manual_seed(0)
    model = LlamaForCausalLM(model_config(tiny, shape)).to(getattr(torch, dtype))
    model.save_pretrained(out_dir, safe_serialization=True)
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

    from dpo_ray.data.batches import MicroBatch, step_scale
    from dpo_ray.data.collate import collate_pairs, to_device
    from dpo_ray.logprobs import forward_pairs
    from dpo_ray.schema import RunConfig
    from dpo_ray.sizing.memory_estimate import policy_rank, policy_shape
    from dpo_ray.workers.distributed import free_port
    from dpo_ray.workers.policy import PolicyWorker
    from dpo_ray.workers.specs import PolicySpec

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
        worker = PolicyWorker(PolicySpec.of(cfg), 0, 1, str(model_dir), total_steps=1, accumulation=1)
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


def float64_adamw_step(model_dir: Path, pairs, reference, cfg) -> dict:
    """One AdamW step on the whole batch in float64, from the model's bf16 weights (the policy's objective)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from dpo_ray.data.collate import collate_pairs
    from dpo_ray.logprobs import forward_pairs

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).double()
    out = forward_pairs(model, collate_pairs(pairs, 0, dtype=torch.float64))
    ref_c, ref_r = (torch.tensor(r, dtype=torch.float64) for r in reference)
    margins = (out.chosen_logps - ref_c) - (out.rejected_logps - ref_r)
    nll = -out.chosen_logps.sum() / sum(len(p.chosen_ids) for p in pairs)
    (-F.logsigmoid(cfg.algo.beta * margins).mean() + cfg.algo.rpo_alpha * nll).backward()
    t = cfg.train
    torch.optim.AdamW(model.parameters(), lr=t.lr, betas=tuple(t.adam_betas), weight_decay=t.weight_decay).step()
    return {k: v.double().cpu() for k, v in model.state_dict().items()}


def bf16_config(on_gpu: bool, work: Path):
    from dpo_ray.schema import RunConfig

    cfg = RunConfig()
    cfg.cluster.gpus_per_rank, cfg.model.dtype, cfg.cache_dir = (1 if on_gpu else 0), "bfloat16", str(work / "cache")
    cfg.train.optimizer, cfg.train.lr, cfg.train.max_grad_norm = "adamw", 1e-2, 0.0
    cfg.train.lr_scheduler, cfg.train.warmup_steps = "constant", 0.0
    return cfg


def one_step(cfg, model_dir: Path, pairs, reference, stage: int):
    """A rank of world size 1 at this stage takes one step over two micro-batches; its weights and memory."""
    from dpo_ray.data.batches import MicroBatch, step_scale
    from dpo_ray.workers.distributed import free_port
    from dpo_ray.workers.policy import PolicyWorker
    from dpo_ray.workers.specs import PolicySpec

    worker = PolicyWorker(PolicySpec.of(cfg), 0, 1, str(model_dir), total_steps=1, accumulation=2)
    worker.start("127.0.0.1", free_port(), stage)
    half = len(pairs) // 2
    micro = [MicroBatch(pairs[:half], reference[0][:half], reference[1][:half])]
    micro.append(MicroBatch(pairs[half:], reference[0][half:], reference[1][half:]))
    began = time.perf_counter()
    worker.train_step(micro, step_scale(pairs))
    seconds = time.perf_counter() - began
    state, grown = worker.full_state_dict(), worker.memory_growth()
    optimizer = type(worker.engine.optimizer).__name__
    worker.engine.destroy()
    return state, grown, seconds, optimizer


def precision(model_dir: Path, on_gpu: bool, work: Path, tiny: bool) -> dict:
    """bf16 AdamW at stages 1-3 (and 3 with CPU Adam on GPU) against float64 on the tiny model; a ~1B model's planned
    vs peak memory."""
    import torch

    from dpo_ray.sizing.memory_estimate import policy_rank, policy_shape

    pairs = make_pairs(4, 48, TINY["vocab_size"], seed=5)
    cfg, reference = bf16_config(on_gpu, work), ([-30.0] * len(pairs), [-30.0] * len(pairs))
    expected = float64_adamw_step(model_dir, pairs, reference, cfg)
    start = {k: v.double() for k, v in load(model_dir, torch.bfloat16, "cpu").state_dict().items() if k in expected}
    norm = torch.cat([(expected[k] - start[k]).flatten() for k in start]).norm()
    results = {}
    for stage, offload in ((1, "none"), (2, "none"), (3, "none"), (3, "cpu")):
        name = f"stage {stage}" + (", CPU Adam" if offload != "none" else "")
        if offload != "none" and not on_gpu:
            results[name] = "skipped: offload is a GPU setting"
            continue
        cfg.deepspeed.offload_optimizer = offload
        try:
            state, _, seconds, optimizer = one_step(cfg, model_dir, pairs, reference, stage)
        except Exception as error:  # an op DeepSpeed cannot build here is a finding, not the end
            results[name] = f"failed: {type(error).__name__}: {str(error)[:300]}"
            continue
        gap = torch.cat([(state[k].double().cpu() - expected[k]).flatten() for k in start]).norm()
        results[name] = {"step_gap_of_norm": float(gap / norm), "optimizer": optimizer, "step_s": seconds}
    cfg.deepspeed.offload_optimizer = "none"
    big = build_model_dir(tiny, work / "llama-1b", LLAMA_1B, "bfloat16")
    big_pairs = make_pairs(4, 48 if tiny else 512, model_config(tiny, LLAMA_1B).vocab_size, seed=3)
    _, grown, seconds, _ = one_step(cfg, big, big_pairs, ([-30.0] * 4, [-30.0] * 4), 3)
    estimate = policy_rank(cfg, policy_shape(cfg, str(big)), 1, 3)
    parts = estimate.device if on_gpu else estimate.host
    margins = ("process", "CUDA context, NCCL, allocator", "fragmentation")  # not in what torch counts as allocated
    results["plan vs peak"] = {
        "params_b": policy_shape(cfg, str(big)).params / 1e9,
        "plan_estimate_gb": sum(p.bytes for p in parts if p.name not in margins) / 1e9,
        "measured_peak_gb": grown["device_peak" if on_gpu else "host_peak_growth"] / 1e9,
        "step_s": seconds,
    }
    return results


def _stream_member(rank: int, port: int, device: str, out) -> None:
    import torch

    from dpo_ray.workers.distributed import BroadcastGroup
    from dpo_ray.workers.weight_stream import TensorSpec, receive_tensors, send_tensors

    gen = torch.Generator().manual_seed(0)
    tensors = {f"t{i}": torch.randn(n, 257, generator=gen).to(torch.bfloat16) for i, n in enumerate((3, 1000, 77))}
    specs = [TensorSpec.of(name, t.dtype, t.shape) for name, t in tensors.items()]
    group = BroadcastGroup("127.0.0.1", port, rank, 2, "gloo", timeout_s=120)
    if rank == 0:
        on_device = [t.to(device) for t in tensors.values()]
        out.put((rank, send_tensors(specs, on_device, 100_000, group.broadcast, device)))
    else:
        got = {name: t.cpu() for name, t in receive_tensors(specs, 100_000, group.broadcast, device)}
        out.put((rank, all(torch.equal(got[k], v) for k, v in tensors.items())))


def stream(device: str) -> dict:
    """The weight stream between two processes over gloo, its buffers on device."""
    import multiprocessing

    from dpo_ray.workers.distributed import free_port

    context = multiprocessing.get_context("spawn")
    out, port = context.Queue(), free_port()
    members = [context.Process(target=_stream_member, args=(rank, port, device, out)) for rank in range(2)]
    for m in members:
        m.start()
    results = dict(out.get(timeout=180) for _ in members)
    for m in members:
        m.join(timeout=60)
    return {"device": device, "bytes_sent": results[0], "received_bit_exact": results[1]}


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
    precision = report.get("precision") or {}
    steps = {k: v for k, v in precision.items() if k != "plan vs peak"}
    if steps:
        lines += ["", "| bf16 AdamW step (tiny) | optimizer | gap to float64, of the step | step s |"]
        lines.append("|---|---|---|---|")
        for name, row in steps.items():
            if isinstance(row, dict):
                lines.append(f"| {name} | {row['optimizer']} | {row['step_gap_of_norm']:.3f} | {row['step_s']:.2f} |")
            else:
                lines.append(f"| {name} | {row} | | |")
    peak = precision.get("plan vs peak")
    if peak:
        lines += [
            "",
            f"bf16 AdamW step of a {peak['params_b']:.2f}B Llama at ZeRO-3: plan estimate (no fixed margins) "
            f"{peak['plan_estimate_gb']:.2f} GB, measured peak {peak['measured_peak_gb']:.2f} GB, "
            f"{peak['step_s']:.2f} s",
        ]
    sent = report.get("stream")
    if sent:
        lines += [
            "",
            f"weight stream over gloo on {sent['device']}: {sent['bytes_sent']} bytes, received bit-exact: "
            f"{sent['received_bit_exact']}",
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
        tiny_dir = model_dir if args.tiny else build_model_dir(True, work / "tiny")
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
            "precision": lambda: precision(tiny_dir, args.device == "cuda", work, args.tiny),
            "stream": lambda: stream(args.device),
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
