"""dpo-ray vs Hugging Face TRL's DPOTrainer on the same machine, model, pairs and batch settings (run by hand:
.venv/bin/pip install trl==1.16.0 --no-deps && .venv/bin/python bench/offline_vs_trl.py).

Both train the embedded task's pairs with the sigmoid loss (beta 0.1), batch 64 pairs (--batch), constant lr,
float32 (TRL's bf16 autocast, on by default, is turned off), no warmup. TRL runs in one process with 2 threads, in its
default mode (a reference forward every step) and with precomputed reference log-probs; dpo-ray runs through Ray
with 2 ranks of 1 thread each (its default; at the ZeRO stage auto picks, and at ZeRO-3), padded and prefix-shared,
and with 1 rank of 2 threads (TRL's process shape). Reported: median training-step seconds (first step left out),
tokens/s, the ratio to TRL's default, MFU, and the first step's loss (ln 2 for both: policy == reference). Runs
alternate A B A B.

--model llama-26m is issue 17's workload: a ~24M Llama with a 999-word vocabulary and random-word pairs (prompts of
10-40, responses of 10-60 words, one token each). --model llama-50m trains a 50M-parameter Llama built on the fly
(the embedded task's tokenizer and pairs) instead of the 0.42M embedded model, where the tiny model is
overhead-bound; --model smollm2-135m trains SmolLM2-135M-Instruct (installed offline, see
dpo_ray/tasks/pretrained.py) on the same pairs in its own tokenizer and chat template. The MFU column is the achieved
FLOP/s over this machine's float32 matmul peak, measured in the same run: 6 x params x tokens per training step
(chosen + rejected tokens, counted the same way for every system) plus 2 x params x tokens for each reference
forward the step runs."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")


# The issue-17 workload's model (~26M parameters with a 1000-word vocabulary); bench/step_profile.py profiles it too
LLAMA_26M = dict(
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)


def matmul_peak(threads: int = 2, n: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matmul FLOP/s with `threads` threads: the best of a few large matmuls."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


class PeakRss:
    """Peak memory a run adds, sampled every 0.1 s over this process and all its descendants (Ray's raylet and
    workers): a process that existed before the run counts with its growth, a new one (an actor) with its whole
    resident size. Shared pages count once per process."""

    def __init__(self, interval: float = 0.1):
        import threading

        self.interval, self.peak, self.stop = interval, 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def resident() -> dict:
        import psutil

        me = psutil.Process()
        sizes = {}
        for proc in [me] + me.children(recursive=True):
            try:
                sizes[proc.pid] = proc.memory_info().rss
            except psutil.Error:
                pass  # the process ended between listing and reading
        return sizes

    def _sample(self) -> None:
        while not self.stop.is_set():
            now = self.resident()
            self.peak = max(self.peak, sum(max(0, rss - self.before.get(pid, 0)) for pid, rss in now.items()))
            self.stop.wait(self.interval)

    def __enter__(self):
        self.before = self.resident()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.added = self.peak


def build_large_model(tokenizer_dir: str, out_dir: str) -> str:
    """A 50M-parameter Llama with the embedded task's tokenizer, saved as an HF directory."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=640,
        intermediate_size=1728,
        num_hidden_layers=10,
        num_attention_heads=10,
        num_key_value_heads=5,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_words_task(out_dir: str, n_pairs: int = 640, seed: int = 0) -> tuple[str, str]:
    """Issue 17's workload: a ~26M Llama (vocab 1000) and pairs of random words with prompts of 10-40 and responses
    of 10-60 tokens, as text both systems tokenise alike (one token per word: a word-level tokenizer)."""
    import random
    from pathlib import Path

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted({"".join(rng.choice(letters) for _ in range(5)) for _ in range(2000)})[:996]
    vocab = {token: i for i, token in enumerate(["<pad>", "<|end|>", "<unk>", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<|end|>", unk_token="<unk>"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **LLAMA_26M
    )
    torch.manual_seed(0)
    model_dir = Path(out_dir) / "model"
    LlamaForCausalLM(config).save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    text = lambda lo, hi: " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))  # noqa: E731
    train_file = Path(out_dir) / "pairs.jsonl"
    rows = [
        {"prompt": text(10, 40), "chosen": " " + text(10, 60), "rejected": " " + text(10, 60)} for _ in range(n_pairs)
    ]
    train_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(model_dir), str(train_file)


def trl_run(model_path: str, train_file: str, steps: int, precompute: bool, batch: int):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(2)
    times, losses, threads = [], [], set()

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            threads.add(torch.get_num_threads())
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.began)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-"),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=3e-4,
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=0.1,
        loss_type=["sigmoid"],
        max_grad_norm=1.0,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,  # TRL turns bf16 autocast on by default, also on CPU, where bf16 matmuls are slow here
        precompute_ref_log_probs=precompute,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_path),
        args=config,
        processing_class=tokenizer,
        train_dataset=datasets.Dataset.from_json(train_file),
        callbacks=[Timer()],
    )
    began = time.perf_counter()
    trainer.train()
    if threads != {2}:
        raise RuntimeError(f"TRL trained with {threads} torch threads, not 2: the comparison would be unfair")
    if trainer.args.bf16 or trainer.args.fp16 or trainer.model.dtype != torch.float32:
        raise RuntimeError("TRL did not train in float32: the comparison would be unfair")
    return times[1:], losses[0], time.perf_counter() - began


def dpo_ray_run(inputs, steps: int, layout: str, batch: int, ranks: int = 2, stage: str = "auto"):
    from dpo_ray.campaign.offline import OfflineCampaign
    from dpo_ray.compose import compose

    cfg = compose(
        [
            "progress=false",
            "algo=dpo",
            f"train.max_steps={steps}",
            "train.lr_scheduler=constant",
            "train.warmup_steps=0",
            f"train.batch_size={batch}",
            f"train.micro_batch_size={max(1, batch // 2)}",
            "reference.cache=false",
            f"data.layout={'prefix_shared' if layout == 'prefix' else 'padded'}",
            f"output_dir={tempfile.mkdtemp(prefix='bench-')}",
            f"cluster.policy_ranks={ranks}",
            f"cluster.torch_threads={2 // ranks}",
            f"deepspeed.zero_stage={stage}",
        ]
    )
    began = time.perf_counter()
    campaign = OfflineCampaign(cfg, inputs)
    result = campaign.run()
    first = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[1])
    return result.step_seconds[1:], first["loss"], time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", choices=["embedded", "llama-26m", "llama-50m", "smollm2-135m"], default="embedded")
    parser.add_argument("--batch", type=int, default=64, help="pairs per step (both systems)")
    parser.add_argument(
        "--systems", nargs="+", default=None, help="substrings of the system names to run (default: all)"
    )
    args = parser.parse_args()

    import ray

    from dpo_ray.campaign.inputs import offline_inputs
    from dpo_ray.compose import compose
    from dpo_ray.tasks.embedded import ensure_embedded_task

    embedded = compose(["progress=false"])
    inputs = offline_inputs(embedded)
    task = ensure_embedded_task(embedded.embedded, embedded.cache_dir)
    train_file = str(task.train_file)
    words = args.model == "llama-26m"
    if words:
        from dpo_ray.data.dataset import load_pairs
        from dpo_ray.data.tokenize import TokenizeSettings
        from dpo_ray.workers.models import load_tokenizer

        model_dir, train_file = build_words_task(tempfile.mkdtemp(prefix="llama-26m-"), args.steps * args.batch + 32)
        inputs.model_path = inputs.reference_path = model_dir
        pairs, _ = load_pairs([train_file], load_tokenizer(model_dir), TokenizeSettings(max_length=128))
        inputs.train, inputs.eval = pairs[:-32], pairs[-32:]
    elif args.model == "llama-50m":
        large = build_large_model(inputs.model_path, tempfile.mkdtemp(prefix="llama-50m-"))
        inputs.model_path = inputs.reference_path = large
    elif args.model == "smollm2-135m":
        from dpo_ray.data.dataset import load_pairs
        from dpo_ray.data.tokenize import TokenizeSettings
        from dpo_ray.tasks.pretrained import ensure_pretrained
        from dpo_ray.workers.models import load_tokenizer

        inputs.model_path = inputs.reference_path = ensure_pretrained("smollm2-135m", "~/.cache/dpo-ray")
        tokenizer = load_tokenizer(inputs.model_path)
        inputs.train, _ = load_pairs([train_file], tokenizer, TokenizeSettings(max_length=512))
        inputs.eval, _ = load_pairs([str(task.eval_file)], tokenizer, TokenizeSettings(max_length=512))
    from transformers import AutoConfig, AutoModelForCausalLM

    params = sum(
        p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(inputs.model_path)).parameters()
    )
    tokens = statistics.mean(p.tokens for p in inputs.train) * args.batch  # chosen + rejected tokens of a step
    peak = matmul_peak()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    systems = {
        "TRL DPOTrainer (default)": lambda: trl_run(inputs.model_path, train_file, args.steps, False, args.batch),
        "TRL DPOTrainer (precomputed ref)": lambda: trl_run(
            inputs.model_path, train_file, args.steps, True, args.batch
        ),
        "dpo-ray, 2 ranks, padded": lambda: dpo_ray_run(inputs, args.steps, "padded", args.batch),
        "dpo-ray, 2 ranks ZeRO-3, prefix-shared": lambda: dpo_ray_run(inputs, args.steps, "prefix", args.batch, 2, "3"),
        "dpo-ray, 2 ranks, prefix-shared": lambda: dpo_ray_run(inputs, args.steps, "prefix", args.batch),
        "dpo-ray, 1 rank x 2 threads, prefix-shared": lambda: dpo_ray_run(
            inputs, args.steps, "prefix", args.batch, ranks=1
        ),
    }
    if args.systems:
        systems = {k: v for k, v in systems.items() if any(part in k for part in args.systems)}
    results = {name: [] for name in systems}
    for _ in range(args.repeats):
        for name, run in systems.items():
            with PeakRss() as memory:
                outcome = run()
            results[name].append((*outcome, memory.added))
    ray.shutdown()
    first = next(iter(results))
    base = statistics.median(s for steps, *_ in results[first] for s in steps)
    print(
        f"\n{args.model} ({params / 1e6:.2f}M params), {'random-word' if words else 'embedded task'} pairs, "
        f"batch {args.batch} pairs (~{tokens:.0f} tokens), "
        f"{args.steps} steps x {args.repeats} runs, 2 CPUs; float32 matmul peak {peak / 1e9:.1f} GFLOP/s\n"
    )
    print(
        f"| system | median step s | tokens/s | x {first} | MFU | first-step loss "
        "| run wall s (incl. reference) | peak RSS GB added |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        median = statistics.median(s for steps, *_ in runs for s in steps)
        flops = (6 + (2 if name == "TRL DPOTrainer (default)" else 0)) * params * tokens / median
        print(
            f"| {name} | {median:.3f} | {tokens / median:.0f} | {base / median:.2f} | {flops / peak:.1%} | "
            f"{runs[0][1]:.4f} | {statistics.median(r[2] for r in runs):.1f} | {max(r[3] for r in runs) / 2**30:.2f} |"
        )


if __name__ == "__main__":
    main()
