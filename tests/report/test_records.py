"""Reading a run directory for the report: resumed runs, and directories that are not runs."""

from __future__ import annotations

import json

import pytest

from dpo_ray.cli import main
from dpo_ray.report.records import load_records


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_a_resumed_runs_repeated_steps_keep_their_later_values(tmp_path):
    write_jsonl(
        tmp_path / "metrics.jsonl",
        [
            {"step": 0, "eval_loss": 0.7},
            {"step": 1, "loss": 0.69},
            {"step": 2, "loss": 0.6},
            {"step": 2, "loss": 0.5},
            {"step": 3, "loss": 0.4},
        ],
    )
    records = load_records(tmp_path)
    assert [(r["step"], r["loss"]) for r in records.steps] == [(1, 0.69), (2, 0.5), (3, 0.4)]
    assert records.evals == [{"step": 0, "eval_loss": 0.7}] and records.rounds == []


def test_bad_run_directories_are_errors_that_name_the_file_and_line(tmp_path, capsys):
    with pytest.raises(ValueError, match="no metrics.jsonl"):
        load_records(tmp_path)
    rows = '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": \n{"step": 3, "loss": 0.4}\n'
    (tmp_path / "metrics.jsonl").write_text(rows)
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2: not JSON"):  # a bad line amid whole ones
        load_records(tmp_path)
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
