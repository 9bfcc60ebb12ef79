"""The time a SIGKILL of the driver adds to a run, measured (run by hand: .venv/bin/python bench/resume_after_kill.py).

`dpo-ray train` on the embedded default (the README's main job) with a checkpoint every --checkpoint-every steps,
side by side: uninterrupted, and killed with SIGKILL as soon as step --kill-at is logged, then resumed by the same
command. Reported per repeat: each wall time, the time the kill added (killed run up to the kill + resumed run -
uninterrupted run), the steps done twice, and whether the final weights are bit-identical. The task's SFT warm start
and the reference log-probs are built once before any timing (a shared cache_dir), as a user's rerun finds them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def command(run_dir: Path, cache: Path, checkpoint_every: int) -> list[str]:
    return [
        sys.executable, "-m", "dpo_ray.cli", "train", f"output_dir={run_dir}", f"cache_dir={cache}",
        f"train.checkpoint_every={checkpoint_every}", "progress=false", "report_to=none",
    ]  # fmt: skip


def logged_step(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return 0
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.endswith("}")]
    return max((r["step"] for r in rows if "loss" in r), default=0)


def weights_digest(run_dir: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted((run_dir / "final").glob("*.safetensors")):
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def run(cmd: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def killed_at(cmd: list[str], run_dir: Path, step: int) -> tuple[float, int]:
    """Seconds until the driver was killed once step was logged, and the last step logged then."""
    began = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while logged_step(run_dir) < step:
        if process.poll() is not None:
            raise SystemExit(f"the run ended (exit {process.returncode}) before step {step}")
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return time.perf_counter() - began, logged_step(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-at", type=int, default=25, help="kill the driver once this step is logged")
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        warm = run(command(root / "warm", root / "cache", args.checkpoint_every))
        steps = logged_step(root / "warm")
        print(f"warm-up run (builds the task and the reference cache): {warm:.1f}s, {steps} steps")
        columns = "uninterrupted s | killed at step | s to the kill | resumed s | added s | steps redone | same weights"
        print(f"| repeat | {columns} |\n|---|---|---|---|---|---|---|---|")
        for k in range(args.repeats):
            plain, killed = root / f"plain{k}", root / f"killed{k}"
            uninterrupted = run(command(plain, root / "cache", args.checkpoint_every))
            cmd = command(killed, root / "cache", args.checkpoint_every)
            to_kill, at = killed_at(cmd, killed, args.kill_at)
            resumed = run(cmd)
            redone = at - at // args.checkpoint_every * args.checkpoint_every
            same = weights_digest(plain) == weights_digest(killed)
            added = to_kill + resumed - uninterrupted
            print(
                f"| {k + 1} | {uninterrupted:.1f} | {at} | {to_kill:.1f} | {resumed:.1f} | {added:.1f} | {redone} | "
                f"{'yes' if same else 'NO'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
