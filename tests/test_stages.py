"""Campaign files (`dpo-ray campaign FILE.yaml`): read and checked before anything runs, each stage from the last
one's model, a finished stage skipped, a changed one run again with every stage after it, and the lineage of every
model."""

from __future__ import annotations

import json

import pytest

from dpo_ray.stages import Stage, read_campaign, stage_key
from dpo_ray.validation import ConfigError

SHIPPED = "configs/campaign/embedded.yaml"


def test_the_shipped_campaign_reads_as_three_stages_from_offline_dpo_to_online_kto():
    campaign = read_campaign(SHIPPED)
    assert [(s.name, s.command) for s in campaign.stages] == [
        ("offline_dpo", "train"),
        ("online_dpo", "online"),
        ("online_kto", "online"),
    ]
    assert "online.reference_update=each_round" in campaign.stages[1].overrides
    assert not any(s.names_model for s in campaign.stages)  # each from the last one's final model


@pytest.mark.parametrize(
    "stages, expected",
    [
        ([{"name": "a", "command": "train", "overrides": ["algo.betta=0.1"]}], "stage 1 (a): algo.betta: unknown"),
        (
            [{"name": "a", "command": "train"}, {"name": "b", "command": "online", "overrides": ["online.rounds=0"]}],
            "stage 2 (b): online.rounds=0: must be",
        ),
        ([{"name": "a", "command": "serve"}], "stage 1 (a): command='serve': must be one of train, online"),
        ([{"name": "a", "command": "train", "overrides": ["output_dir=x"]}], "output_dir is the campaign's to give"),
        ([{"name": "a", "command": "train"}, {"name": "a", "command": "online"}], "name 'a' must be unique"),
        ([{"name": "a", "command": "train", "model": "m"}], "stage 1 (a): unknown key(s) model"),
        ([{"name": "a", "command": "train", "overrides": "algo.beta=0.2"}], "overrides must be a list"),
    ],
)
def test_a_bad_campaign_file_fails_before_any_stage_runs_naming_the_stage_and_the_option(tmp_path, stages, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps({"stages": stages}))  # JSON is YAML
    with pytest.raises(ConfigError) as error:
        read_campaign(path)
    assert expected in str(error.value) and str(path) in str(error.value)


def test_a_campaign_directory_in_object_storage_is_refused_naming_the_way_that_works(tmp_path):
    path = tmp_path / "bucket.yaml"
    path.write_text(json.dumps({"output_dir": "s3://runs/c", "stages": [{"name": "a", "command": "train"}]}))
    with pytest.raises(ConfigError, match=r"bucket.yaml: output_dir=s3://runs/c: a campaign's directory is a path"):
        read_campaign(path)


def test_a_stage_key_follows_its_command_overrides_and_parent():
    stage = Stage("a", "online", ["online.rounds=2"], False)
    key = stage_key(stage, "parent")
    assert key == stage_key(Stage("renamed", "online", ["online.rounds=2"], False), "parent")
    assert key != stage_key(Stage("a", "online", ["online.rounds=3"], False), "parent")
    assert key != stage_key(Stage("a", "train", ["online.rounds=2"], False), "parent")
    assert key != stage_key(stage, "another parent")


@pytest.mark.slow
def test_a_campaign_chains_its_stages_skips_what_finished_and_reruns_a_changed_stage_and_those_after(
    local_ray, tmp_path, task_cache_dir
):
    """Two offline stages (DPO, then more DPO from the first's final model: the chaining online stages take too, by
    the same model.start_from): lineage.json names each model's parent; a rerun runs nothing; a changed first stage
    runs again, and so does the second (its parent changed), each old run directory moved aside."""
    from dpo_ray import api

    shared = [f"cache_dir={task_cache_dir}", "progress=false", "cluster.reward_cpus=0.5", "cluster.reference_ranks=1"]
    shared.append("cluster.reuse_rank_processes=true")  # each stage builds in the processes the one before left
    stages = [
        {"name": "offline", "command": "train", "overrides": ["train.max_steps=3"]},
        {"name": "more", "command": "train", "overrides": ["train.max_steps=2", "algo.beta=0.2"]},
    ]
    path = tmp_path / "campaign.yaml"
    path.write_text(json.dumps({"output_dir": str(tmp_path / "runs"), "overrides": shared, "stages": stages}))
    first = api.campaign(path)
    root = tmp_path / "runs"
    assert first.skipped == [] and list(first.stages) == ["offline", "more"]
    lineage = json.loads(first.lineage.read_text())
    assert [(e["stage"], e["parent_stage"], e["parent"]) for e in lineage] == [
        ("offline", "", "embedded"),
        ("more", "offline", str(root / "offline" / "final")),
    ]
    assert lineage[0]["task"] == "embedded" and lineage[1]["model"] == str(root / "more" / "final")
    import hashlib
    from pathlib import Path

    data = lineage[0]["data"]  # the task's own preference files, each with its sha256
    assert [Path(f).name for f in data] == ["train.jsonl", "eval.jsonl"]
    assert all(digest == hashlib.sha256(Path(f).read_bytes()).hexdigest() for f, digest in data.items())
    config = json.loads((root / "more" / "config.json").read_text())
    assert config["model"]["start_from"] == str(root / "offline" / "final")
    assert "task greedy accuracy" in first.summary.read_text()
    again = api.campaign(path)
    assert again.skipped == ["offline", "more"]
    stages[0]["overrides"] = ["train.max_steps=2"]
    path.write_text(json.dumps({"output_dir": str(root), "overrides": shared, "stages": stages}))
    changed = api.campaign(path)
    assert changed.skipped == [] and changed.stages["offline"].metrics[-1]["step"] <= 2
    moved = sorted(p.name for p in root.iterdir() if ".replaced-" in p.name)
    assert moved == ["more.replaced-1", "offline.replaced-1"]


def test_the_readme_campaign_of_xiong_et_al_reads_and_each_stage_composes(tmp_path):
    """README's iterative-DPO campaign file, as written: three online stages, each from the last one's model."""
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("## Iterative campaigns\n")[1].split("```yaml\n")[1].split("```")[0]
    path = tmp_path / "my_iterative_dpo.yaml"
    path.write_text(block)
    campaign = read_campaign(path)
    assert [s.name for s in campaign.stages] == ["iteration_1", "iteration_2", "iteration_3"]
    assert all(s.command == "online" and not s.names_model for s in campaign.stages)
