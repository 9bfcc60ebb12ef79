"""Whose results a run directory holds (run.json): another run's results stop a run before anything is written, the
same run finished is not run again, and the same run made longer continues only from a checkpoint."""

from __future__ import annotations

import json

import pytest

from dpo_ray.campaign.failures import RunFinished, RunMismatch
from dpo_ray.campaign.run_record import RunPlan, claim, finish, read_record
from dpo_ray.schema import Resume

FINGERPRINT = {"algo": {"beta": 0.1, "loss_type": "sigmoid"}, "model": "abc"}


def finished_run(run_dir, command="train", steps=10):
    claim(run_dir, RunPlan(command, FINGERPRINT, steps, "steps"), Resume.auto, has_checkpoint=False)
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    finish(run_dir)


def test_an_empty_directory_is_claimed_and_marked_running_then_finished(tmp_path):
    claim(tmp_path, RunPlan("train", FINGERPRINT, 10, "steps"), Resume.auto, has_checkpoint=False)
    assert read_record(tmp_path)["state"] == "running" and read_record(tmp_path)["steps"] == 10
    finish(tmp_path)
    assert read_record(tmp_path)["state"] == "finished" and read_record(tmp_path)["ended"] > 0


def test_another_runs_results_stop_the_run_naming_what_differs_and_leave_them_untouched(tmp_path):
    finished_run(tmp_path)
    before = (tmp_path / "run.json").read_text()
    other = {**FINGERPRINT, "algo": {"beta": 0.3, "loss_type": "sigmoid"}}
    with pytest.raises(
        RunMismatch,
        match=r"holds a finished `train` run, which this run differs from: algo.beta: "
        r"0.1 -> 0.3\. To keep it, give another output_dir, or resume=never",
    ):
        claim(tmp_path, RunPlan("train", other, 10, "steps"), Resume.auto, has_checkpoint=False)
    with pytest.raises(RunMismatch, match=r"holds a finished `train` run, and this is `online`"):
        claim(tmp_path, RunPlan("online", FINGERPRINT, 3, "rounds"), Resume.auto, has_checkpoint=True)
    assert (tmp_path / "run.json").read_text() == before
    # resume=never replaces it on purpose
    claim(tmp_path, RunPlan("train", other, 10, "steps"), Resume.never, has_checkpoint=False)
    assert read_record(tmp_path)["fingerprint"]["algo"]["beta"] == 0.3


def test_results_without_a_record_are_another_runs(tmp_path):
    (tmp_path / "final").mkdir()
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(RunMismatch, match=r"holds another run's results \(metrics.jsonl, final\) and no run.json"):
        claim(tmp_path, RunPlan("train", FINGERPRINT, 10, "steps"), Resume.auto, has_checkpoint=False)
    claim(tmp_path / "fresh", RunPlan("train", FINGERPRINT, 10, "steps"), Resume.auto, has_checkpoint=False)


def test_the_same_run_finished_is_not_run_again_and_a_longer_one_needs_a_checkpoint(tmp_path):
    finished_run(tmp_path, steps=10)
    with pytest.raises(RunFinished, match=r"holds this run, finished at .* \(10 steps\)") as done:
        claim(tmp_path, RunPlan("train", FINGERPRINT, 10, "steps"), Resume.auto, has_checkpoint=True)
    assert done.value.run_dir == tmp_path
    with pytest.raises(RunMismatch, match=r"finished after 10 steps, with no checkpoint to continue from to 20"):
        claim(tmp_path, RunPlan("train", FINGERPRINT, 20, "steps"), Resume.auto, has_checkpoint=False)
    claim(tmp_path, RunPlan("train", FINGERPRINT, 20, "steps"), Resume.auto, has_checkpoint=True)
    record = json.loads((tmp_path / "run.json").read_text())
    assert (record["state"], record["steps"]) == ("running", 20)


def test_a_stopped_run_is_continued_by_the_same_run(tmp_path):
    claim(tmp_path, RunPlan("train", FINGERPRINT, 10, "steps"), Resume.auto, has_checkpoint=False)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    claim(tmp_path, RunPlan("train", FINGERPRINT, 10, "steps"), Resume.auto, has_checkpoint=False)
    assert read_record(tmp_path)["state"] == "running"
