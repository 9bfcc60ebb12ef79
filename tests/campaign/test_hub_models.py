"""Model options given as Hub ids (model.path=OWNER/NAME), as a user coming from TRL writes them: found in the local
HF cache offline, refused with the way out when absent offline, and a plan made from the launch directory, with a
reward module beside the user, works as the run would (issue 40)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_ray.campaign.preflight import InputError, check_inputs
from dpo_ray.compose import compose

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, tiny_model_dir, monkeypatch) -> Path:
    """A Hugging Face cache holding acme/tiny-llama (the tiny model, as the Hub's snapshot layout has it), offline."""
    cache = tmp_path / "hf-cache"
    repo = cache / "models--acme--tiny-llama"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_a_hub_id_is_the_local_hf_caches_snapshot_and_an_absent_one_offline_says_how_to_get_it(hub_cache, tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    cfg = compose(["model.path=acme/tiny-llama", f"data.train_files=[{data}]"], "train")
    check_inputs(cfg, "train")
    assert cfg.model.path == str(hub_cache / "models--acme--tiny-llama" / "snapshots" / COMMIT)
    cfg = compose(["model.path=acme/tiny-llama", "model.reference_path=acme/absent", f"data.train_files=[{data}]"])
    with pytest.raises(InputError, match=r"model.reference_path=acme/absent: not in the local Hugging Face cache "
                       r".*HF_HUB_OFFLINE=1 forbids a download: fetch it where the network is allowed"):  # fmt: skip
        check_inputs(cfg, "train")


def test_plan_from_the_launch_directory_reads_a_hub_id_and_imports_the_reward_module_beside_it(hub_cache, tmp_path):
    (tmp_path / "my_rewards.py").write_text("def score(prompt, response):\n    return 1.0\n")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "say hi"}) + "\n")
    dpo_ray = str(Path(sys.executable).parent / "dpo-ray")  # the console script: its directory is not the user's
    run = ["online", "model.path=acme/tiny-llama", f"online.prompt_files=[{prompts}]", "--nodes=1"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([dpo_ray, "plan", *run, "reward.fn=my_rewards:score"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "verdict: fits" in done.stdout and "rule" in done.stdout
    misspelled = subprocess.run([dpo_ray, "plan", *run, "reward.fn=my_reward:score"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
    assert misspelled.returncode == 2
    assert "reward.fn='my_reward:score': cannot import it (No module named 'my_reward')" in misspelled.stderr
