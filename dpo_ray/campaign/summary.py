"""The before/after table a run ends with: held-out preference metrics and, for the embedded task, sampled accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .atomic import write_text

ROWS = [
    ("eval_rewards/accuracies", "held-out reward accuracy"),
    ("eval_rewards/margins", "held-out implicit reward margin"),
    ("eval_loss", "held-out loss"),
    ("eval_logps/chosen", "held-out chosen log-prob"),
    ("task/sampled_accuracy", "sampled task accuracy (T=1)"),
    ("task/greedy_accuracy", "greedy task accuracy"),
]


def load_trained_model(model_dir: Path, base_path: str):
    """An HF directory as saved by a run; a LoRA adapter directory is loaded onto its base."""
    from transformers import AutoModelForCausalLM

    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        return PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_path, use_safetensors=True), model_dir
        )
    return AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)


def task_metrics(model, tokenizer, task, samples: int, seed: int) -> dict[str, float]:
    from ..tasks.sampling import task_accuracy

    with torch.no_grad():
        return {
            "task/sampled_accuracy": task_accuracy(
                model, tokenizer, task.eval_prompts, task.reward, samples, 1.0, seed
            ),
            "task/greedy_accuracy": task_accuracy(model, tokenizer, task.eval_prompts, task.reward, 1, 0.0, seed),
        }


def format_table(before: dict[str, float], after: dict[str, float]) -> str:
    lines = [f"| {'metric':<34} | {'before':>8} | {'after':>8} |", f"|{'-' * 36}|{'-' * 10}|{'-' * 10}|"]
    for key, label in ROWS:
        if key in before and key in after:
            lines.append(f"| {label:<34} | {before[key]:>8.3f} | {after[key]:>8.3f} |")
    return "\n".join(lines)


def finish(run_dir: Path, before: dict[str, float], after: dict[str, float], extra: dict) -> str:
    table = format_table(before, after)
    write_text(run_dir / "summary.json", json.dumps({"before": before, "after": after, **extra}, indent=2))
    write_text(run_dir / "summary.md", table + "\n")
    return table


ROUND_COLUMNS = [
    ("round", "round", "d"),
    ("reward/mean", "mean reward", ".3f"),
    ("pairs", "pairs", "d"),
    ("eval/sampled_reward", "held-out sampled", ".3f"),
    ("eval/greedy_reward", "held-out greedy", ".3f"),
    ("time/round", "seconds", ".1f"),
]


def format_rounds(rows: list[dict]) -> str:
    """One line per online round (round 0 is the starting policy); blank where a round has no such value."""
    head = "| " + " | ".join(f"{label:>16}" for _, label, _ in ROUND_COLUMNS) + " |"
    lines = [head, "|" + "|".join("-" * 18 for _ in ROUND_COLUMNS) + "|"]
    for row in rows:
        cells = [format(row[key], spec) if key in row else "" for key, _, spec in ROUND_COLUMNS]
        lines.append("| " + " | ".join(f"{c:>16}" for c in cells) + " |")
    return "\n".join(lines)
