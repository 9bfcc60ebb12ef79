"""launch/slurm/submit.sh renders the allocation a run's config needs, with a stand-in for sbatch that prints its
arguments; a bad option stops it before sbatch is called."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def submit(tmp_path, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    fake = tmp_path / "sbatch"
    fake.write_text('#!/bin/bash\necho "sbatch $*"\n')
    fake.chmod(0o755)
    environ = {**os.environ, "SBATCH": str(fake), "DPO_RAY_VENV": str(Path(sys.executable).parent.parent), **env}
    return subprocess.run(
        ["bash", str(ROOT / "launch" / "slurm" / "submit.sh"), *overrides], capture_output=True, text=True, env=environ
    )


@pytest.mark.parametrize(
    "overrides, allocation",
    [
        (["train"], "--nodes=1 --ntasks-per-node=1 --cpus-per-task=2 --exclusive --mem=0"),
        (["train", "cluster=single_node_8gpu"], "--nodes=1 --ntasks-per-node=1 --cpus-per-task=16 --gres=gpu:4"),
        (
            ["online", "cluster=multi_node", "reward.model_path=/models/rm"],
            "--nodes=4 --ntasks-per-node=1 --cpus-per-task=32 --gres=gpu:8 --exclusive --mem=0",  # 8 policy ranks x 4
        ),
        (  # a campaign's stages run in turn: its online stages' allocation, the larger
            ["campaign", "configs/campaign/embedded.yaml", "cluster=single_node_8gpu"],
            "--nodes=1 --ntasks-per-node=1 --cpus-per-task=32 --gres=gpu:7",
        ),
    ],
)
def test_the_allocation_comes_from_the_config(tmp_path, overrides, allocation, monkeypatch):
    monkeypatch.chdir(ROOT)  # the campaign file is named from the checkout
    done = submit(tmp_path, *overrides)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith(f"sbatch {allocation}") and line.endswith(
        f"launch/slurm/dpo-ray.sbatch {' '.join(overrides)}"
    )


def test_shared_nodes_and_extra_options(tmp_path):
    done = submit(tmp_path, "train", DPO_RAY_SHARE_NODES="1", SBATCH_ARGS="--partition=gpu --time=1:00:00")
    assert done.stdout.startswith(
        "sbatch --nodes=1 --ntasks-per-node=1 --cpus-per-task=2 --partition=gpu --time=1:00:00 "
    )
    assert "--exclusive" not in done.stdout


def test_a_bad_campaign_stage_stops_before_sbatch(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - {name: first, command: online, overrides: [online.rounds=0]}\n")
    done = submit(tmp_path, "campaign", str(bad))
    assert done.returncode != 0 and "sbatch" not in done.stdout
    assert "stage 1 (first): online.rounds=0: must be" in done.stderr


def test_a_bad_option_stops_before_sbatch(tmp_path):
    done = submit(tmp_path, "train", "cluster.gpus_per_rank=0.5")
    assert done.returncode != 0 and "sbatch" not in done.stdout
    assert "cluster.gpus_per_rank=0.5: must be 0 or a whole number" in done.stderr
