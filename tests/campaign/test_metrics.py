"""Metrics rows are keyed by step: a resumed run keeps the rows up to its checkpoint and writes the rest once; a line
cut by a crash is repaired, not fatal."""

from __future__ import annotations

import json

from dpo_ray.campaign.metrics import MetricsWriter
from dpo_ray.report.records import load_records


def test_a_resumed_run_keeps_rows_up_to_its_checkpoint_and_a_cut_line_goes(run_config, tmp_path):
    run_config.report_to = ["none"]
    rows = [{"step": 0, "eval_loss": 0.7}] + [{"step": s, "loss": 1.0 / s} for s in range(1, 6)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "metrics.jsonl").write_text(text + '{"step": 6, "lo')  # a crash after step 5, mid-line
    assert [r["step"] for r in load_records(tmp_path).steps] == [1, 2, 3, 4, 5]  # the report reads the whole rows
    writer = MetricsWriter(tmp_path, run_config, resumed_step=4)  # resumed from the step-4 checkpoint
    for step in (5, 6):
        writer.write(step, {"loss": 2.0 / step})
    writer.close()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in load_records(tmp_path).steps][-2:] == [0.4, 2.0 / 6]
