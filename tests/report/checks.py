"""Checks of a built report against the run's own records, shared by the real-run tests of each campaign."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from dpo_ray.report.markdown import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_report(run_dir: Path, expected_plots) -> str:
    """Build the report, check every plot it embeds is a PNG that exists, and that each summary row's start and end
    equal the first and last values of its metric in metrics.jsonl / rounds.jsonl. Returns the Markdown."""
    report = write_report(run_dir)
    text = report.read_text()
    embedded = re.findall(r"!\[[^]]*\]\((plots/[^)]+\.png)\)", text)
    assert sorted(Path(p).name for p in embedded) == sorted(expected_plots)
    for relative in embedded:
        data = (run_dir / relative).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, relative
    read = lambda name: (
        [json.loads(line) for line in (run_dir / name).read_text().splitlines()] if (run_dir / name).exists() else []
    )
    steps = [row for row in read("metrics.jsonl") if "round" not in row]  # online runs also log each round there
    rounds = read("rounds.jsonl")
    summary = re.findall(r"^\| [^|]+ \| `([^`]+)` \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", text, re.M)
    assert len(summary) >= 5
    for key, start, end, where in summary:
        if where.strip().startswith("before"):
            continue  # task metrics come from summary.json
        source = rounds if where.strip().startswith("round") else steps
        values = [row[key] for row in source if isinstance(row.get(key), (int, float))]
        assert values, key
        assert math.isclose(float(start), values[0], rel_tol=1e-3, abs_tol=1e-12), (key, start, values[0])
        assert math.isclose(float(end), values[-1], rel_tol=1e-3, abs_tol=1e-12), (key, end, values[-1])
    return text
