"""An online campaign (the embedded default, 2 rounds) stopped in each phase, at the log line that begins it, by
SIGTERM (as Slurm's preemption and scancel send it) or SIGKILL, then rerun by the same command: the stop's exit
status and seconds, whether a traceback showed, Ray processes of the run left behind, and whether the rerun ends as
an uninterrupted run does (rounds.jsonl rows without their clocks, every round's pair files, the final weights, each
hashed), with the seconds the stop and rerun add.

    .venv/bin/python bench/stop_phases.py                      # SIGTERM and SIGKILL in every phase
    .venv/bin/python bench/stop_phases.py --signals TERM --phases generation scoring
    .venv/bin/python bench/stop_phases.py online.async_rounds=true --signals KILL --phases training  # a draw ahead
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dpo_ray.campaign.local_ray import processes_using, session_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# each phase and the driver's log line that begins it (the signal lands just after that line)
PHASES = {
    "Ray start": r"Ray: starting a local instance",
    "group start": r"Ray: ready in",
    "model load": r"policy group: loading",
    "starting evaluation": r"groups started together",
    "generation": r"round 1/2: generating",
    "scoring": r"round 1/2: generate done",
    "reference pass": r"round 1/2: pairs done",
    "training": r"round 1/2: reference done",
    "weight sync": r"round 1/2: wait done",
    "evaluation": r"round 1/2: sync done",
    "round checkpoint": r"round 1/2: eval done",
    "final save": r"round 2/2: eval done",
}


def run(run_dir: Path, overrides: list[str], stop_at: str | None = None, signum: int = signal.SIGTERM) -> dict:
    """`dpo-ray online` into run_dir; with stop_at, signalled at the first log line matching it. Its local Ray lives
    in the run's own session directory (local_ray.session_dir), where the processes it leaves are found."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_TMPDIR"}
    command = [str(ROOT / ".venv/bin/dpo-ray"), "online", f"output_dir={run_dir}", "progress=false", *overrides]
    began, sent, lines = time.perf_counter(), None, []
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, start_new_session=True
    )
    pattern = re.compile(stop_at) if stop_at else None
    for line in process.stderr:
        lines.append(line)
        if pattern and sent is None and pattern.search(line):
            os.kill(process.pid, signum)
            sent = time.perf_counter()
    process.wait()
    ended = time.perf_counter()
    time.sleep(2)  # a stopped driver's processes exit with their raylet: give them the time they take
    return {
        "session": session_dir(process.pid),
        "rc": process.returncode,
        "seconds": ended - began,
        "stop_s": ended - sent if sent else None,
        "traceback": any("Traceback" in line for line in lines),
        "left": len(processes_using(session_dir(process.pid))),
        "last": lines[-1].strip()[:200] if lines else "",
    }


def outcome(run_dir: Path) -> dict:
    """What an uninterrupted run must equal: its rows without clocks, each round's pair files, its final weights."""
    rows = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if not k.startswith("time/") and k != "timeline"} for r in rows]
    pairs = {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((run_dir / "rounds").glob("round_*/pairs/*.arrow"))
    }
    weights = hashlib.sha256(b"".join(p.read_bytes() for p in sorted((run_dir / "final").glob("*.safetensors"))))
    return {"rows": rows, "pairs": pairs, "weights": weights.hexdigest()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--signals", nargs="+", default=["TERM", "KILL"], choices=["TERM", "KILL"])
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=list(PHASES))
    parser.add_argument("overrides", nargs="*", help="options for every run (online.async_rounds=true: a draw ahead)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stop-phases-"))
    try:
        whole = run(work / "uninterrupted", args.overrides)
        expected = outcome(work / "uninterrupted")
        print(f"uninterrupted: {whole['seconds']:.1f}s, exit {whole['rc']}\n", flush=True)
        print(
            "| signal | phase | exit | stop s | traceback | processes left | left after the rerun | rerun exit "
            "| rerun equal | s added |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name in args.signals:
            signum = getattr(signal, f"SIG{name}")
            for phase in args.phases:
                run_dir = work / f"{name}-{phase.replace(' ', '_')}"
                stopped = run(run_dir, args.overrides, PHASES[phase], signum)
                rerun = run(run_dir, args.overrides)  # it cleans up what a killed driver's session left
                cleaned = len(processes_using(stopped["session"]))
                equal = rerun["rc"] == 0 and outcome(run_dir) == expected
                added = stopped["seconds"] + rerun["seconds"] - whole["seconds"]
                stop_s = f"{stopped['stop_s']:.1f}" if stopped["stop_s"] is not None else "never signalled"
                print(
                    f"| SIG{name} | {phase} | {stopped['rc']} | {stop_s} | {'yes' if stopped['traceback'] else 'no'} "
                    f"| {stopped['left']} | {cleaned} | {rerun['rc']} | {'yes' if equal else 'NO'} | {added:.1f} |",
                    flush=True,
                )
                if stopped["rc"] not in (143, -9) or not equal:
                    print(f"<!-- {phase}: {stopped['last']} / rerun: {rerun['last']} -->", flush=True)
                shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
