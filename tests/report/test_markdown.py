"""report.md from a constructed online run (the real-run reports are checked in tests/campaign): plots, summary
numbers, and a tripped monitor at the top."""

from __future__ import annotations

import json

from .checks import check_report
from .test_monitors import healthy_rounds
from .test_records import write_jsonl


def test_a_report_shows_the_runs_numbers_plots_and_tripped_monitors(tmp_path):
    rounds = healthy_rounds(4)
    rounds[-1]["eval/kl"] = 60.0  # far from the reference
    for row in rounds[1:]:
        row.update(
            {"reward/mean": 0.1 * row["round"], "pairs": 10, "time/generate": 2.0, "time/train": 3.0, "time/round": 5.5}
        )
    write_jsonl(tmp_path / "rounds.jsonl", rounds)
    write_jsonl(
        tmp_path / "metrics.jsonl",
        [
            {
                "step": s,
                "loss": 0.7 - 0.01 * s,
                "rewards/accuracies": 0.5 + 0.01 * s,
                "rewards/margins": 0.02 * s,
                "grad_norm": 1.0,
                "learning_rate": 1e-4,
                "tokens_per_second": 900.0 + s,
            }
            for s in range(1, 21)
        ],
    )
    (tmp_path / "config.json").write_text(json.dumps({"monitor": {"kl_max": 50.0}}))
    text = check_report(tmp_path, ["rounds.png", "frontier.png", "phases.png", "training.png"])
    assert "**WARNING** over-optimisation: KL to reference: 60 > 50" in text
    assert text.count("| WARNING |") == 1
