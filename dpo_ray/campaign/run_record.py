"""Whose results a run directory holds: run.json names the command, the run's fingerprint and how far it goes, written
before Ray starts and marked finished when the run ends. A run into a directory holding another run's results stops
before anything is overwritten; the same run, finished, is not run again; the same run made longer continues."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_text
from ..run_files import METRICS, ROUNDS, RUN_RECORD
from ..schema import Resume
from .failures import RunFinished, RunMismatch
from .fingerprint import differences

RESULTS = (METRICS, ROUNDS, "final", "checkpoints", "rounds")  # what a run directory's results are


@dataclass(frozen=True)
class RunPlan:
    """What this run is: its command, fingerprint, and length (train: steps; online: rounds)."""

    command: str
    fingerprint: dict
    length: int
    unit: str  # "steps" or "rounds"


def read_record(run_dir: Path) -> dict | None:
    path = run_dir / RUN_RECORD
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def results_in(run_dir: Path) -> list[str]:
    return [name for name in RESULTS if (run_dir / name).exists()]


def claim(run_dir: Path, plan: RunPlan, resume: Resume, has_checkpoint: bool) -> None:
    """Record this run in run_dir, or raise: RunMismatch when run_dir holds another run's results (resume=never
    replaces them on purpose), RunFinished when it holds this very run, finished."""
    record = read_record(run_dir)
    if resume != Resume.never:
        check_claim(run_dir, plan, record, has_checkpoint)
    write_text(
        run_dir / RUN_RECORD,
        json.dumps(
            {
                "command": plan.command,
                "fingerprint": plan.fingerprint,
                plan.unit: plan.length,
                "state": "running",
                "started": time.time(),
            },
            indent=2,
        ),
    )


def check_claim(run_dir: Path, plan: RunPlan, record: dict | None, has_checkpoint: bool) -> None:
    way_out = f"give another output_dir, or resume=never to replace what {run_dir} holds"
    if record is None:
        found = results_in(run_dir)
        if found:
            raise RunMismatch(
                f"output_dir={run_dir} holds another run's results ({', '.join(found)}) and no {RUN_RECORD} saying "
                f"which run made them: {way_out}"
            )
        return
    finished = record.get("state") == "finished"
    what = f"a {'finished' if finished else 'stopped'} `{record.get('command')}` run"
    if record.get("command") != plan.command:
        raise RunMismatch(f"output_dir={run_dir} holds {what}, and this is `{plan.command}`: {way_out}")
    changed = differences(record.get("fingerprint") or {}, plan.fingerprint)
    if changed:
        raise RunMismatch(
            f"output_dir={run_dir} holds {what}, which this run differs from: {'; '.join(changed[:8])}. "
            f"To keep it, {way_out}"
        )
    if not finished:
        return  # the same run, stopped: resume=auto continues it
    done = record.get(plan.unit, 0)
    ended = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.get("ended", 0)))
    if plan.length <= done:
        raise RunFinished(f"output_dir={run_dir} holds this run, finished at {ended} ({done} {plan.unit})", run_dir)
    if not has_checkpoint:
        raise RunMismatch(
            f"output_dir={run_dir} holds this run finished after {done} {plan.unit}, with no checkpoint to continue "
            f"from to {plan.length} (a run made longer later needs train.checkpoint_every=K): {way_out}"
        )


def finish(run_dir: Path) -> None:
    """Mark run_dir's run finished."""
    record = read_record(run_dir) or {}
    record.update(state="finished", ended=time.time())
    write_text(run_dir / RUN_RECORD, json.dumps(record, indent=2))
