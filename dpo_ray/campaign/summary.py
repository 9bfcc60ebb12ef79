"""The table a run ends with: offline, held-out preference metrics before and after (and the task's own metrics,
such as the embedded task's sampled accuracy); online, one line per round."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..atomic import write_text
from ..run_files import ATTEMPTS, METRICS, SUMMARY_JSON, SUMMARY_MD

ROWS = [
    ("eval_rewards/accuracies", "held-out reward accuracy"),
    ("eval_rewards/margins", "held-out implicit reward margin"),
    ("eval_rewards/chosen", "held-out chosen reward"),
    ("eval_rewards/rejected", "held-out rejected reward"),
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


def format_table(before: dict[str, float], after: dict[str, float]) -> str:
    lines = [f"| {'metric':<34} | {'before':>8} | {'after':>8} |", f"|{'-' * 36}|{'-' * 10}|{'-' * 10}|"]
    for key, label in ROWS:
        if key in before and key in after:
            lines.append(f"| {label:<34} | {before[key]:>8.3f} | {after[key]:>8.3f} |")
    return "\n".join(lines)


def _rows(path: Path) -> list[dict]:
    """A JSON Lines file's whole rows (a line cut by a crash is left out)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def step_timing(run_dir: Path) -> dict[str, float]:
    """Training steps of the run, over all its attempts (one metrics row each), and their median seconds."""
    seconds = sorted(r["step_seconds"] for r in _rows(run_dir / METRICS) if "loss" in r and r.get("step_seconds"))
    return {"steps": len(seconds), "median_step_seconds": seconds[len(seconds) // 2] if seconds else float("nan")}


def offline_summary(result, inputs) -> str:
    """An offline run's before/after table (with its task's own metrics, where the task has some), also written to
    summary.json and summary.md in the run directory."""
    before, after = dict(result.before), dict(result.after)
    if inputs.task_metrics is not None:
        from ..workers.models import load_tokenizer

        tokenizer = load_tokenizer(inputs.model_path)
        with torch.no_grad():
            before.update(
                inputs.task_metrics(load_trained_model(Path(inputs.model_path), inputs.model_path), tokenizer)
            )
            after.update(inputs.task_metrics(load_trained_model(result.final_model, inputs.model_path), tokenizer))
    timing = step_timing(result.run_dir)
    table = format_table(before, after) + (f"\n\ndata: {inputs.data_note}" if inputs.data_note else "")
    attempts = _rows(result.run_dir / ATTEMPTS)
    summary = {"before": before, "after": after, **timing, "data": inputs.data_note, "attempts": attempts}
    if len(attempts) > 1:
        table += f"\n\n{len(attempts)} attempts: " + "; ".join(
            f"{a['cause'][:80]} (from {a['resumed_from'] or 'the start'})" for a in attempts
        )
    write_text(result.run_dir / SUMMARY_JSON, json.dumps(summary, indent=2))
    write_text(result.run_dir / SUMMARY_MD, table + "\n")
    return table


def online_summary(result) -> str:
    """An online campaign's table, one line per round, also written to summary.md in the run directory."""
    table = format_rounds(result.rounds)
    write_text(result.run_dir / SUMMARY_MD, table + "\n")
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
    """One line per online round (round 0 is the starting policy); blank where a round has no such value. Online KTO's
    rounds count labelled examples, not pairs."""
    unit = "examples" if any("examples/desirable_share" in row for row in rows) else "pairs"
    head = "| " + " | ".join(f"{unit if key == 'pairs' else label:>16}" for key, label, _ in ROUND_COLUMNS) + " |"
    lines = [head, "|" + "|".join("-" * 18 for _ in ROUND_COLUMNS) + "|"]
    for row in rows:
        cells = [format(row[key], spec) if key in row else "" for key, _, spec in ROUND_COLUMNS]
        lines.append("| " + " | ".join(f"{c:>16}" for c in cells) + " |")
    return "\n".join(lines)
