"""OpenMP's spin count on shared cores (run by hand: .venv/bin/python bench/omp_spin.py).

Builds the embedded task (tokenizer, 300 SFT steps of the 0.4M Llama, pair files: the first thing `make run` does) in
a new process with 2 torch threads, once per GOMP_SPINCOUNT: libgomp's default (300000), dpo-ray's (3000, set in
dpo_ray/__init__.py) and none (OMP_WAIT_POLICY=PASSIVE); on idle cores and beside one busy core (a Python loop, as
another job or a second rank would be). Prints seconds (wall and CPU), median of --repeats, runs interleaved."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

SETTINGS = {
    "libgomp's default (300000)": {"GOMP_SPINCOUNT": "300000"},
    "dpo-ray's (3000)": {"GOMP_SPINCOUNT": "3000"},
    "none (OMP_WAIT_POLICY=PASSIVE)": {"GOMP_SPINCOUNT": "0", "OMP_WAIT_POLICY": "PASSIVE"},
}

BUILD = """
import json, sys, tempfile, time
import dpo_ray, torch
torch.set_num_threads(2)
from dpo_ray.schema import EmbeddedConfig
from dpo_ray.tasks.embedded import ensure_embedded_task
wall, cpu = time.perf_counter(), time.process_time()
ensure_embedded_task(EmbeddedConfig(), tempfile.mkdtemp())
print(json.dumps([time.perf_counter() - wall, time.process_time() - cpu]))
"""


def build_seconds(env: dict[str, str]) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", BUILD], env={**os.environ, **env}, check=True, capture_output=True, text=True
    )
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for load in ("idle", "one busy core"):
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load != "idle" else None
        try:
            runs = {name: [] for name in SETTINGS}
            for _ in range(args.repeats):
                for name, env in SETTINGS.items():
                    runs[name].append(build_seconds(env))
                    print(load, name, runs[name][-1], file=sys.stderr)
        finally:
            if busy is not None:
                busy.kill()
        default = statistics.median(w for w, _ in runs[next(iter(SETTINGS))])
        for name, seconds in runs.items():
            wall = statistics.median(w for w, _ in seconds)
            cpu = statistics.median(c for _, c in seconds)
            rows.append(f"| {load} | {name} | {wall:.1f} | {cpu:.1f} | {wall / default:.2f} |")
    print(f"\nembedded task build, 2 torch threads, {os.cpu_count()} CPUs, median of {args.repeats}\n")
    print("| cores | spin count | wall (s) | CPU (s) | wall / default |\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
