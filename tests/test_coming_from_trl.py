"""README's "Coming from TRL": a row for every DPOConfig field of the installed TRL, dpo-ray names that exist, and a
dpo-ray command that composes."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest

from dpo_ray.compose import compose
from dpo_ray.options import options
from dpo_ray.schema import RunConfig

SECTION = Path(__file__).parents[1].joinpath("README.md").read_text().split("## Coming from TRL\n")[1].split("\n## ")[0]
ROWS = [line.split("|")[1:-1] for line in SECTION.splitlines() if line.startswith("| `")]


def test_every_dpoconfig_field_of_the_installed_trl_has_a_row():
    trl = pytest.importorskip("trl")
    listed = {name for row in ROWS for name in re.findall(r"`([a-z0-9_]+)`", row[0])}
    missing = sorted(f.name for f in dataclasses.fields(trl.DPOConfig) if f.name not in listed)
    assert not missing, f"README 'Coming from TRL' has no row for TRL {trl.__version__}'s {missing}"


def test_the_dpo_ray_names_in_the_table_are_options():
    known = {o.name for o in options(RunConfig)}
    sections = {name.split(".")[0] + ".*" for name in known if "." in name}
    named = {name for row in ROWS for cell in row[1:3] for name in re.findall(r"`([a-z_.*]+)`", cell)}
    looks_like_options = {n for n in named if "." in n or n in known}
    assert looks_like_options - known - sections == set()


def test_the_dpo_ray_command_beside_the_trl_script_composes():
    block = SECTION.split("```bash\n")[1].split("```")[0].replace("\\\n", " ")
    words = shlex.split(block)
    assert words[:2] == ["dpo-ray", "train"]
    cfg = compose(words[2:], "train")
    assert (cfg.algo.sync_ref_model, cfg.report_to, cfg.cluster.policy_ranks) == (True, ["wandb"], 8)
