"""Online DPO, dpo-ray vs Hugging Face TRL's OnlineDPOTrainer, side by side (run by hand: .venv/bin/python
bench/online_vs_trl.py; needs trl==1.16.0 and the IMDb task's packages, see configs/experiment/imdb_sentiment.yaml).

The same model (SmolLM2-135M-Instruct with a LoRA adapter, r 16, alpha 32, all linear layers, float32), the same
training prompts (--prompts IMDb review openings as plain text to continue, as the imdb task renders them), the same
reward (VADER's compound sentiment of the continuation, as a reward function on both sides), the same 32-token
completions at temperature 1, beta 0.5, lr 5e-4 (2 warmup steps, then constant) and 16 pairs an optimizer step; each
side in its own process on the same cores. TRL (`trl.experimental.online_dpo`) runs its `generate` mode: per step,
2 completions for each of 16 prompts, the policy and (adapter off) reference forwards and one optimizer step.
dpo-ray runs `dpo-ray online +experiment=imdb_sentiment` with rounds of --round-prompts prompts, one pass over each
round's pairs, with 2 samples a prompt (TRL's) and then 4 (its default; still one pair a prompt). Runs go TRL,
dpo-ray n=2, dpo-ray n=4, one after the other.

Reported per run: wall seconds (process start to end), the seconds outside the training rounds (start-up, and for
dpo-ray its held-out evaluation before and after training and the final report), seconds per round of
--round-prompts prompts (for TRL, its steps' mean times the steps in such a round), prompts and samples per hour of
training rounds, and where a round's time goes. Then every final model, and the start, is scored here by one evaluator
(plain transformers): 2 samples for each held-out prompt, their mean VADER reward and their KL to the start (sum over
sampled tokens of log pi - log pi_start, averaged).

TRL runs with gradient checkpointing off, its fastest mode on this machine (--trl-checkpointing: on, its default,
which also turns the KV cache off in generation); its vLLM colocate mode (--trl-vllm) fails here (bench/README.md)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

MAX_TOKENS = 32
BETA = 0.5
LR = 5e-4
BATCH = 16
IMDB = dict(min_words=2, max_words=8, seed=0)  # the imdb task's defaults (dpo_ray/schema.py ImdbConfig)


def prompts(train: int, held_out: int) -> tuple[list[str], list[str]]:
    from dpo_ray.tasks.imdb import imdb_prompts

    return imdb_prompts(train, held_out, IMDB["min_words"], IMDB["max_words"], IMDB["seed"])


def model_dir() -> str:
    from dpo_ray.tasks.pretrained import ensure_pretrained

    return ensure_pretrained("smollm2-135m", "~/.cache/dpo-ray")


def trl_side(args) -> dict:
    """TRL's OnlineDPOTrainer in this process; returns its timings."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from dpo_ray.tasks.imdb import vader_reward

    torch.set_num_threads(args.threads)
    train, _ = prompts(args.prompts, args.eval_prompts)
    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    dataset = Dataset.from_list([{"prompt": p} for p in train])  # plain text to continue, as the imdb task renders it

    def vader(completions, **_) -> list[float]:
        return [vader_reward("", c) for c in completions]

    config = OnlineDPOConfig(
        output_dir=str(Path(args.out) / "trl"),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        num_train_epochs=1,
        learning_rate=LR,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=2,
        beta=[BETA],
        max_new_tokens=MAX_TOKENS,
        temperature=1.0,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=args.seed,
        dataloader_num_workers=0,
        gradient_checkpointing=args.trl_checkpointing,
        **(dict(use_vllm=True, vllm_mode="colocate") if args.trl_vllm else {}),
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = OnlineDPOTrainer(
        model=model,
        reward_funcs=vader,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
    )
    phases = {"generate": 0.0, "forward": 0.0, "score": 0.0}

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[name] += time.perf_counter() - start

        return wrapper

    trainer._generate = timed("generate", trainer._generate)
    trainer._forward = timed("forward", trainer._forward)  # the policy's and the reference's
    trainer._calculate_rewards_from_functions = timed("score", trainer._calculate_rewards_from_functions)
    steps: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            steps.append(time.perf_counter() - self.start)

    trainer.add_callback(StepTimes())
    train_began = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - train_began
    trainer.save_model(str(Path(args.out) / "trl" / "final"))
    if torch.get_num_threads() != args.threads:
        raise RuntimeError(f"TRL ran with {torch.get_num_threads()} threads, not {args.threads}")
    rest = train_s - sum(phases.values())
    return {
        "train_s": train_s,
        "steps": len(steps),
        "phases": {**phases, "backward+optimizer+rest": rest},
        "final": str(Path(args.out) / "trl" / "final"),
    }


def dpo_ray_overrides(args, samples: int, run_dir: Path) -> list[str]:
    rounds = args.prompts // args.round_prompts
    return [
        "+experiment=imdb_sentiment",
        f"output_dir={run_dir}",
        "resume=never",
        f"online.samples_per_prompt={samples}",
        "online.epochs_per_round=1",
        f"online.rounds={rounds}",
        f"online.prompts_per_round={args.round_prompts}",
        "online.prompt_order=fresh",
        "online.min_margin=0",
        f"online.eval_every={rounds}",
        f"online.max_tokens={MAX_TOKENS}",
        f"imdb.prompts={args.prompts}",
        f"imdb.eval_prompts={args.eval_prompts}",
        f"algo.beta={BETA}",
        f"train.lr={LR}",
        f"train.batch_size={BATCH}",
        "reference.cache=false",  # runs repeat their samples exactly: a cached reference pass would go untimed
        *args.overrides,
    ]


def run_dpo_ray(args, samples: int) -> dict:
    run_dir = Path(args.out) / f"dpo-ray-n{samples}"
    began = time.perf_counter()
    command = [sys.executable, "-m", "dpo_ray.cli", "online", *dpo_ray_overrides(args, samples, run_dir)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines() if line.strip()]
    rounds = [r for r in rounds if r.get("round", 0) >= 1]
    names = ("generate", "score", "pairs", "reference", "train", "wait", "sync")
    # the rounds' span (the checkpoint between rounds included), less the held-out evaluations inside it
    first = rounds[0]["timeline"][0][1]
    last = max(end for name, _, end in rounds[-1]["timeline"] if name != "eval")
    span = last - first - sum(r.get("time/eval", 0.0) for r in rounds[:-1])
    return {
        "wall_s": wall,
        "rounds_s": [span / len(rounds)] * len(rounds),
        "phases": {name: sum(r.get(f"time/{name}", 0.0) for r in rounds) for name in names},
        "final": str(run_dir / "final"),
    }


def run_trl(args) -> dict:
    out = Path(args.out) / "trl.json"
    began = time.perf_counter()
    command = [
        sys.executable,
        __file__,
        "--side",
        "trl",
        "--out",
        args.out,
        "--prompts",
        str(args.prompts),
        "--eval-prompts",
        str(args.eval_prompts),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        *(["--trl-checkpointing"] if args.trl_checkpointing else []),
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - began
    steps_per_round = args.round_prompts // BATCH
    result["rounds_s"] = [result["train_s"] / result["steps"] * steps_per_round] * (args.prompts // args.round_prompts)
    return result


def evaluate(final_dirs: dict[str, str], held_out: list[str], samples: int, seed: int) -> dict[str, dict]:
    """Mean VADER reward and KL to the start of `samples` sampled completions per held-out prompt, per model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpo_ray.tasks.imdb import vader_reward

    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    start = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    enc = tokenizer(held_out, return_tensors="pt", padding=True)  # plain text, as both sides trained on
    results = {}
    for name, final in final_dirs.items():
        model = (
            start
            if final is None
            else PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), final)
            .merge_and_unload()
            .eval()
        )
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_k=None,
                top_p=None,
                num_return_sequences=samples,
                max_new_tokens=MAX_TOKENS,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            completion = out[:, enc["input_ids"].shape[1] :]
            # a completion's tokens up to and including its first end-of-sequence token
            ended = (completion == tokenizer.eos_token_id).int().cumsum(1)
            mask = (ended == 0) | ((ended == 1) & (completion == tokenizer.eos_token_id))
            attention = torch.cat([enc["attention_mask"].repeat_interleave(samples, 0), mask.int()], 1)
            kl = sequence_logp(model, out, attention, completion.shape[1]) - sequence_logp(
                start, out, attention, completion.shape[1]
            )
        words = tokenizer.batch_decode(completion * mask, skip_special_tokens=True)
        rewards = [vader_reward("", w) for w in words]
        results[name] = {
            "reward": statistics.fmean(rewards),
            "kl": kl.mean().item(),
            "length": mask.sum(1).float().mean().item(),
        }
    return results


def sequence_logp(model, ids, attention, completion_len: int):
    import torch

    logits = model(input_ids=ids, attention_mask=attention).logits[:, -completion_len - 1 : -1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, -completion_len:, None]).squeeze(-1)
    return (logp * attention[:, -completion_len:]).sum(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=128, help="training prompts, each seen once")
    parser.add_argument("--round-prompts", type=int, default=64, help="dpo-ray's prompts a round (a multiple of 16)")
    parser.add_argument("--eval-prompts", type=int, default=96, help="held-out prompts the final models are scored on")
    parser.add_argument("--threads", type=int, default=2, help="TRL's torch threads (this machine's cores)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default="runs/online_vs_trl")
    parser.add_argument("--side", choices=["trl"], help=argparse.SUPPRESS)
    parser.add_argument("--trl-vllm", action="store_true", help="--side trl: TRL's vLLM colocate mode")
    parser.add_argument(
        "--trl-checkpointing",
        action="store_true",
        help="TRL with its default gradient checkpointing, which also turns the KV cache off in generation; without "
        "it, TRL's fastest mode",
    )
    parser.add_argument("--samples", type=int, nargs="+", default=[2, 4], help="dpo-ray's samples per prompt")
    parser.add_argument("overrides", nargs="*", help="further dpo-ray config overrides")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.side == "trl":
        (Path(args.out) / "trl.json").write_text(json.dumps(trl_side(args)))
        return
    if args.prompts % args.round_prompts or args.round_prompts % BATCH:
        parser.error(f"--prompts must be a multiple of --round-prompts, and that a multiple of {BATCH}")

    runs = {"TRL OnlineDPOTrainer, n=2": (run_trl, 2)}
    runs.update({f"dpo-ray online, n={n}": (lambda a, n=n: run_dpo_ray(a, n), n) for n in args.samples})
    results = {}
    for name, (run, samples) in runs.items():
        results[name] = run(args) | {"samples": samples}
        print(f"{name}: {results[name]['wall_s']:.0f} s", flush=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1))

    _, held_out = prompts(args.prompts, args.eval_prompts)
    scores = evaluate({"start": None, **{k: v["final"] for k, v in results.items()}}, held_out, 2, args.seed)
    trl_rate = None
    print(
        f"\n{args.prompts} training prompts, rounds of {args.round_prompts}, {args.eval_prompts} held-out prompts x 2 "
        f"samples; {time.strftime('%Y-%m-%d %H:%M')}\n"
    )
    columns = ["run", "wall s", "outside rounds s", "s per round", "prompts/h", "samples/h", "vs TRL"]
    columns += ["held-out reward", "KL to start"]
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    start = scores["start"]
    print(f"| start | - | - | - | - | - | - | {start['reward']:.3f} | 0 |")
    for name, r in results.items():
        rounds_s = sum(r["rounds_s"])
        rate = args.prompts * r["samples"] / rounds_s * 3600
        trl_rate = trl_rate or rate
        s = scores[name]
        print(
            f"| {name} | {r['wall_s']:.0f} | {r['wall_s'] - rounds_s:.0f} | {statistics.fmean(r['rounds_s']):.1f} | "
            f"{args.prompts / rounds_s * 3600:.0f} | {rate:.0f} | {rate / trl_rate:.2f}x | {s['reward']:.3f} | "
            f"{s['kl']:.2f} |"
        )
    print("\nwhere the training rounds' time goes (s, all rounds):")
    for name, r in results.items():
        print(f"- {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items()))


if __name__ == "__main__":
    main()
