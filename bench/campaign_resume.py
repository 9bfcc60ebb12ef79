"""A campaign killed in its second stage and run again ends as an uninterrupted one (run by hand).

Runs `dpo-ray campaign FILE` (default: the shipped embedded campaign, offline DPO -> 2 online rounds -> online KTO)
three times, each its own process and local Ray: uninterrupted into one directory; then into another, SIGKILLed
(the driver's whole process group, as a lost node or an OOM kill would) once the second stage has checkpointed its
first round, and the same command again; then once more, which should skip every stage. Prints each stage's final
weights digest side by side, whether the lineage's headline metrics match, and the seconds of each command.

    .venv/bin/python bench/campaign_resume.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml


def weights_digest(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(model_dir.glob("*.safetensors")):
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def campaign(file: Path, kill_when: Path | None = None) -> tuple[float, bool]:
    """Run the campaign command; with kill_when, SIGKILL its process group once that path exists. (seconds, killed)"""
    began = time.perf_counter()
    command = [sys.executable, "-m", "dpo_ray.cli", "campaign", str(file), "progress=false"]
    with open(file.with_suffix(".log"), "a") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        killed = False
        while process.poll() is None:
            if kill_when is not None and kill_when.exists():
                os.killpg(process.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.2)
        process.wait()
    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)  # its leftovers
    return time.perf_counter() - began, killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", default="configs/campaign/embedded.yaml")
    parser.add_argument("--runs", default="runs/campaign_resume")
    args = parser.parse_args()
    spec = yaml.safe_load(Path(args.file).read_text())
    second = spec["stages"][1]["name"]
    root = Path(args.runs).resolve()
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in ("uninterrupted", "killed"):
        files[name] = root / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump({**spec, "output_dir": str(root / name)}))
    seconds = {"uninterrupted": campaign(files["uninterrupted"])[0]}
    first_round = root / "killed" / second / "round_checkpoints" / "round_1"
    seconds["killed"], killed = campaign(files["killed"], kill_when=first_round)
    seconds["rerun"] = campaign(files["killed"])[0]
    seconds["rerun of the finished campaign"] = campaign(files["killed"])[0]
    print(f"killed during stage {second!r} after its round-1 checkpoint: {killed}")
    lineages = {name: json.loads((root / name / "lineage.json").read_text()) for name in files}
    print("\n| stage | uninterrupted weights | killed + rerun weights | same | headline metrics equal |")
    print("|---|---|---|---|---|")
    for a, b in zip(lineages["uninterrupted"], lineages["killed"], strict=True):
        da, db = weights_digest(Path(a["model"])), weights_digest(Path(b["model"]))
        print(f"| {a['stage']} | {da} | {db} | {'yes' if da == db else 'NO'} | {a['metrics'] == b['metrics']} |")
    print("\nskipped by the last rerun:", [e["stage"] for e in lineages["killed"] if e["skipped"]])
    print("\n| command | seconds |\n|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.0f} |")
    print(f"\n{(root / 'killed' / 'campaign.md').read_text()}")


if __name__ == "__main__":
    main()
