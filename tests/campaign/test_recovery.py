"""Fault injection with real Ray: a policy rank killed mid-run, after a checkpoint, and the run recovers on its own."""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dpo_ray.campaign.inputs import OfflineInputs
from dpo_ray.campaign.offline import OfflineCampaign
from dpo_ray.schema import ZeroStage

from ..conftest import make_pairs

pytestmark = pytest.mark.slow


def configure(cfg, run_dir):
    cfg.output_dir = str(run_dir)
    cfg.cluster.policy_ranks = 2
    cfg.train.optimizer, cfg.train.lr, cfg.train.epochs = "adamw", 1e-2, 2
    cfg.train.checkpoint_every, cfg.train.keep_checkpoints = 4, 2
    return cfg


def last_num_tokens(run_dir) -> int:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return max((row for row in rows if "num_tokens" in row), key=lambda row: row["step"])["num_tokens"]


def test_a_killed_policy_rank_is_replaced_and_training_ends_bit_identical(
    local_ray, run_config, tiny_model_dir, tmp_path
):
    pairs = make_pairs(48, seed=31)  # 6 steps of 8 pairs per epoch, 12 in all
    inputs = OfflineInputs(tiny_model_dir, tiny_model_dir, pairs[:40] + pairs[:8], pairs[40:])

    began = time.perf_counter()
    clean = OfflineCampaign(configure(run_config, tmp_path / "clean"), inputs).run()
    clean_seconds = time.perf_counter() - began
    assert not clean.restarts

    campaign = OfflineCampaign(configure(run_config, tmp_path / "killed"), inputs)
    killed = []

    def kill_after_first_checkpoint():
        pointer = tmp_path / "killed" / "checkpoints" / "latest"
        while not pointer.exists():
            time.sleep(0.05)
        policy = campaign.policy
        local_ray.kill(policy.group.actors[1], no_restart=True)  # as when its node is lost
        killed.append(pointer.read_text())

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    began = time.perf_counter()
    result = campaign.run()
    recovered_seconds = time.perf_counter() - began
    killer.join(timeout=5)
    assert killed and len(result.restarts) == 1 and "ActorDiedError" in result.restarts[0]["error"]
    assert result.resumed_from in ("step_4", "step_8")
    final = load_file(result.final_model / "model.safetensors")
    expected = load_file(clean.final_model / "model.safetensors")
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in expected)
    assert result.after == clean.after
    rows = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if "loss" in row]
    assert steps == list(range(1, 13))  # the steps after the checkpoint are not there twice
    attempts = [json.loads(line) for line in (tmp_path / "killed" / "attempts.jsonl").read_text().splitlines()]
    assert [a["resumed_from"] for a in attempts] == [None, result.resumed_from]
    assert attempts[0]["cause"] == "start" and "ActorDiedError" in attempts[1]["cause"]
    # TRL's num_tokens counts on across the restart: the last step's count is the uninterrupted run's
    assert (
        last_num_tokens(tmp_path / "killed")
        == last_num_tokens(tmp_path / "clean")
        == 2 * sum(p.tokens for p in pairs[:40] + pairs[:8])
    )
    print(
        f"recovery: killed after {killed[0]}, resumed from {result.resumed_from}; run {recovered_seconds:.1f}s "
        f"vs {clean_seconds:.1f}s uninterrupted"
    )


def poisoned_campaign(run_config, tiny_model_dir, run_dir, mode, bad_rows):
    """A run whose reference log-probs are NaN for bad_rows (as a broken reference model would make them)."""
    import json as _json

    cfg = run_config
    cfg.output_dir, cfg.train.on_nonfinite, cfg.cluster.policy_ranks = str(run_dir), mode, 2
    cfg.train.optimizer, cfg.train.lr, cfg.train.max_grad_norm = "adamw", 1e-2, 1.0
    pairs = make_pairs(24, seed=41)
    campaign = OfflineCampaign(cfg, OfflineInputs(tiny_model_dir, tiny_model_dir, pairs[:16], pairs[16:]))
    chosen, rejected = [-20.0] * 24, [-20.0] * 24
    for i in bad_rows:
        chosen[i] = float("nan")
    campaign.reference.logps = lambda *args, **kwargs: ((chosen, rejected), False)  # a cache would refuse NaN
    return campaign, lambda: [
        r for line in (run_dir / "nonfinite_rows.jsonl").read_text().splitlines() for r in _json.loads(line)["rows"]
    ]


def test_a_nan_loss_stops_the_run_and_saves_the_offending_rows(local_ray, run_config, tiny_model_dir, tmp_path):
    from dpo_ray.campaign.trainer import NonFiniteLossError

    campaign, saved_rows = poisoned_campaign(run_config, tiny_model_dir, tmp_path / "stop", "stop", [5])
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss on 1 pair\(s\) \[5\]"):
        campaign.run()
    assert saved_rows() == [5] and not (tmp_path / "stop" / "final").exists()


def test_skipping_nan_losses_counts_them_and_keeps_the_weights_finite(local_ray, run_config, tiny_model_dir, tmp_path):
    campaign, saved_rows = poisoned_campaign(run_config, tiny_model_dir, tmp_path / "skip", "skip", [3, 11])
    result = campaign.run()
    assert sorted(saved_rows()) == [3, 11]
    weights = load_file(result.final_model / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert result.after["eval_loss"] == result.after["eval_loss"]  # not NaN


class _Planted:
    """Unpickling this runs code: it writes a marker file (what a planted checkpoint would do, harmlessly)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled"))


def test_a_planted_or_cut_checkpoint_is_never_loaded_and_the_previous_one_is(
    local_ray, run_config, tiny_model_dir, tmp_path
):
    """The newest checkpoint's largest shard replaced by a pickle that would write a marker, then (next time) cut in
    half: each time the run resumes from the checkpoint before it, and the pickle is never unpickled."""
    import pickle

    cfg = run_config
    cfg.output_dir, cfg.train.checkpoint_every, cfg.train.keep_checkpoints = str(tmp_path / "run"), 2, 5
    pairs = make_pairs(80, seed=43)
    inputs = OfflineInputs(tiny_model_dir, tiny_model_dir, pairs[:72], pairs[72:])
    checkpoints = tmp_path / "run" / "checkpoints"
    largest = lambda tag: max((checkpoints / tag).rglob("*.pt"), key=lambda p: p.stat().st_size)  # noqa: E731

    cfg.train.max_steps = 4
    OfflineCampaign(cfg, inputs).run()
    marker = tmp_path / "unpickled.txt"
    largest("step_4").write_bytes(pickle.dumps(_Planted(str(marker))))
    cfg.train.max_steps = 6
    assert OfflineCampaign(cfg, inputs).run().resumed_from == "step_2"
    assert not marker.exists()

    shard = largest("step_6")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    cfg.train.max_steps = 8
    assert OfflineCampaign(cfg, inputs).run().resumed_from == "step_4"


def _mount_tmpfs(path: Path, megabytes: int, remount: bool = False) -> bool:
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    options = f"{'remount,' if remount else ''}size={megabytes}m"
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0
    )


def test_a_full_disk_names_its_device_leaves_no_partial_checkpoint_and_a_rerun_with_space_ends_identical(
    local_ray, run_config, tiny_model_dir, tmp_path
):
    """output_dir on a tmpfs that holds one checkpoint, not two: the second save fails with "no space left on tmpfs",
    its partial directory is gone; given space, the rerun resumes from the first and ends as an uninterrupted run."""
    import subprocess

    from dpo_ray.campaign.checkpoints import DiskFull

    disk = tmp_path / "small"
    if not _mount_tmpfs(disk, 3):
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        cfg = run_config
        cfg.train.max_steps, cfg.train.checkpoint_every, cfg.train.keep_checkpoints = 4, 2, 2
        cfg.report_to = ["none"]
        pairs = make_pairs(40, seed=47)
        inputs = OfflineInputs(tiny_model_dir, tiny_model_dir, pairs[:32], pairs[32:])
        cfg.output_dir = str(tmp_path / "roomy")
        clean = OfflineCampaign(cfg, inputs).run()
        cfg.output_dir = str(disk / "run")
        with pytest.raises(DiskFull, match=r"no space left on tmpfs \(mounted at .*small\).*step_4 was not written"):
            OfflineCampaign(cfg, inputs).run()
        checkpoints = disk / "run" / "checkpoints"
        assert not list(checkpoints.glob(".partial-*")) and (checkpoints / "step_2").is_dir()
        assert _mount_tmpfs(disk, 64, remount=True)
        rerun = OfflineCampaign(cfg, inputs).run()
        assert rerun.resumed_from == "step_2"
        a, b = (load_file(r.final_model / "model.safetensors") for r in (clean, rerun))
        assert all(torch.equal(a[k], b[k]) for k in a)
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], capture_output=True)  # a pooled Ray worker may hold a file


def resharded_run(run_config, run_dir, inputs, ranks: int, stage: str, steps: int, sequence_parallel: int = 1):
    cfg = copy.deepcopy(run_config)
    cfg.output_dir, cfg.cluster.policy_ranks, cfg.deepspeed.zero_stage = str(run_dir), ranks, ZeroStage(stage)
    cfg.cluster.sequence_parallel_size = sequence_parallel
    cfg.train.optimizer, cfg.train.lr, cfg.train.max_steps, cfg.train.checkpoint_every = "adamw", 1e-2, steps, 3
    return OfflineCampaign(cfg, inputs).run()


def step_losses(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row and "round" not in row}


def test_a_checkpoint_written_by_2_ranks_resumes_on_1_and_one_by_1_on_2_at_every_kind_of_zero_stage(
    local_ray, run_config, tiny_model_dir, tmp_path
):
    """A preempted node comes back fewer (2 -> 1) or a run grows (1 -> 2): stages 1 and 2 (optimizer states, and at 2
    gradients, partitioned) and stage 3 (parameters too) are re-partitioned through DeepSpeed's universal checkpoint,
    stage 0 loads as it is; deepspeed.zero_stage=auto keeps the stage the checkpoint was written at. And 2 ranks
    sharing each sequence (cluster.sequence_parallel_size=2) train and resume as the others do. Each resumed
    run's losses and final weights are the uninterrupted 2-rank run's, within fp32 reduction order (the sum over a
    step's pairs splits differently across 1 and 2 ranks): losses 1e-5; weights 5e-4, since Adam at lr 1e-2 turns the
    noise in a near-zero gradient into a step of up to lr (measured: 1.1e-4 at stage 3, while the weights move
    ~6e-2)."""
    pairs = make_pairs(48, seed=37)  # 6 steps of 8 pairs
    inputs = OfflineInputs(tiny_model_dir, tiny_model_dir, pairs[:48], pairs[40:])
    clean = resharded_run(run_config, tmp_path / "clean", inputs, 2, "0", 6)
    expected_losses, expected = step_losses(tmp_path / "clean"), load_file(clean.final_model / "model.safetensors")
    # the last: 2 ranks sharing each sequence (Ulysses; one replica, where the clean run has two), before and after
    for stage, before, after, sp in (("2", 2, 1, 1), ("3", 1, 2, 1), ("0", 2, 1, 1), ("1", 2, 1, 1), ("3", 2, 2, 2)):
        run_dir = tmp_path / f"stage{stage}-{before}to{after}-sp{sp}"
        resharded_run(run_config, run_dir, inputs, before, stage, 3, sp)
        assert json.loads((run_dir / "checkpoints" / "step_3" / "run_state.json").read_text())["policy"] == {
            "ranks": before,
            "zero_stage": int(stage),
        }
        resumed = resharded_run(run_config, run_dir, inputs, after, "auto", 6, sp)
        assert resumed.resumed_from == "step_3", stage
        losses = step_losses(run_dir)
        assert sorted(losses) == list(range(1, 7)), stage  # the steps after the checkpoint are there once
        assert all(abs(losses[s] - expected_losses[s]) < 1e-5 for s in losses), (stage, losses, expected_losses)
        final = load_file(resumed.final_model / "model.safetensors")
        worst = max((final[k] - expected[k]).abs().max().item() for k in expected)
        assert worst < 5e-4, (stage, worst)
        assert not list((run_dir / "checkpoints").glob(".partial-*"))  # the converted copy is gone
        config = json.loads((run_dir / "config.json").read_text())
        assert config["deepspeed"]["zero_stage"] == stage  # auto kept the stage the checkpoint was written at
