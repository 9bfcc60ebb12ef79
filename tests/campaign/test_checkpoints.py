"""The checkpoint store without Ray: a fake policy writes shards the way DeepSpeed lays them out."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from dpo_ray.campaign.checkpoints import MANIFEST, CheckpointStore, keep_written_stage


class FakePolicy:
    """Writes one shard file per 'rank' under checkpoint_dir/tag, as DeepSpeed's save_checkpoint does, and reports its
    size and SHA-256 as the ranks do."""

    def __init__(self, fail_on: str = "", size: int = 1, zero_stage: int = 0):
        self.fail_on, self.loaded, self.size, self.zero_stage = fail_on, [], size, zero_stage

    def save_checkpoint(self, checkpoint_dir: str, tag: str) -> dict[str, list]:
        (Path(checkpoint_dir) / tag).mkdir(parents=True)
        (Path(checkpoint_dir) / tag / "rank0.pt").write_bytes(b"shard")
        if self.fail_on and tag.endswith(self.fail_on):
            raise KeyboardInterrupt("killed while writing")  # what a SIGKILL leaves behind, minus the process
        return {"rank0.pt": [5, hashlib.sha256(b"shard").hexdigest()]}

    def load_checkpoint(self, checkpoint_dir: str, tag: str) -> None:
        self.loaded.append(tag)

    def load_resharded(self, checkpoint_dir: str, tag: str, scratch_dir: str) -> None:
        self.loaded.append(f"{tag} resharded in {Path(scratch_dir).name}")


def test_checkpoints_rotate_and_the_pointer_names_the_newest(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for step in (2, 4, 6, 10):
        store.save(FakePolicy(), f"step_{step}", {"step": step})
    assert store.complete() == ["step_6", "step_10"]  # numeric order, not text order
    assert (tmp_path / "latest").read_text() == "step_10"
    assert store.latest() == {"tag": "step_10", "policy": {"ranks": 1, "zero_stage": 0}, "step": 10}


def test_a_checkpoint_killed_while_being_written_is_never_resumed_from(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    store.save(FakePolicy(), "step_4", {"step": 4})
    with pytest.raises(KeyboardInterrupt):
        store.save(FakePolicy(fail_on="step_6"), "step_6", {"step": 6})
    assert (tmp_path / ".partial-step_6").is_dir() and not (tmp_path / "step_6").exists()
    assert store.latest()["tag"] == "step_4"
    # a pointer left naming a directory that is not complete (an older layout, a hand edit) is not trusted either
    (tmp_path / "step_8").mkdir()
    (tmp_path / "latest").write_text("step_8")
    assert store.latest()["tag"] == "step_4"
    policy = FakePolicy()
    store.load(policy, store.latest())
    assert policy.loaded == ["step_4"]
    store.save(FakePolicy(), "step_10", {"step": 10})  # the next save clears the partial one
    assert not (tmp_path / ".partial-step_6").exists()
    assert json.loads((tmp_path / "step_10" / "run_state.json").read_text())["step"] == 10


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: (d / "planted.pt").write_bytes(b"x"), "it holds files its manifest does not list: planted.pt"),
        (lambda d: (d / "rank0.pt").write_bytes(b"shaRd"), "rank0.pt does not match its SHA-256"),
        (lambda d: (d / "rank0.pt").write_bytes(b"sha"), "rank0.pt has 3 bytes, not 5"),
        (lambda d: (d / "rank0.pt").unlink(), "rank0.pt is missing"),
        (lambda d: (d / "manifest.json").unlink(), "it has no manifest"),
    ],
)
def test_a_checkpoint_that_fails_its_manifest_is_skipped_for_the_previous_one(tmp_path, caplog, damage, reason):
    store = CheckpointStore(tmp_path, keep=3)
    for step in (2, 4):
        store.save(FakePolicy(), f"step_{step}", {"step": step})
    damage(tmp_path / "step_4")
    assert CheckpointStore(tmp_path).latest()["tag"] == "step_2"  # a later process: it trusts no file unchecked
    assert f"checkpoint {tmp_path / 'step_4'}: {reason}" in caplog.text
    damage(tmp_path / "step_2")
    from dpo_ray.campaign.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="no checkpoint in .* matches its manifest .*step_4: .*step_2: "):
        CheckpointStore(tmp_path).latest()


def test_a_run_differing_from_the_checkpoints_run_is_told_what_differs():
    from dpo_ray.campaign.fingerprint import RunMismatch, check_resumable, differences

    saved = {"algo": {"loss_type": "sigmoid", "beta": 0.1}, "data": "ab12", "schedule": {"lr": 1e-6}}
    current = {"algo": {"loss_type": "ipo", "beta": 0.1}, "data": "cd34", "schedule": {"lr": 1e-6}}
    assert differences(saved, current) == ["algo.loss_type: 'sigmoid' -> 'ipo'", "data: 'ab12' -> 'cd34'"]
    check_resumable({"tag": "step_2", "fingerprint": saved}, saved, "runs/x")  # the same run resumes
    check_resumable({"tag": "step_2"}, current, "runs/x")  # a checkpoint from before fingerprints: trusted as before
    with pytest.raises(RunMismatch, match=r"runs/x holds another run's checkpoint \(step_2\).*algo.loss_type"):
        check_resumable({"tag": "step_2", "fingerprint": saved}, current, "runs/x")


def test_a_campaign_begun_before_an_option_existed_resumes_while_the_option_is_at_its_default():
    """A round checkpoint written before online.prompt_order and algo.use_weighting existed: the same campaign at those
    options' defaults resumes (their defaults are the old behaviour); set otherwise, it is another campaign."""
    from dpo_ray.campaign.fingerprint import RunMismatch, check_resumable, differences

    current = {
        "algo": {"loss_type": "sigmoid", "beta": 0.1, "use_weighting": False},
        "online": {"samples_per_prompt": 4, "prompt_order": "sample"},
        "data": "ab12",
    }
    saved = {"algo": {"loss_type": "sigmoid", "beta": 0.1}, "online": {"samples_per_prompt": 4}, "data": "ab12"}
    assert differences(saved, current) == []
    check_resumable({"tag": "round_2", "fingerprint": saved}, current, "runs/x")
    fresh = {**current, "online": {"samples_per_prompt": 4, "prompt_order": "fresh"}}
    assert differences(saved, fresh) == ["online.prompt_order: None -> 'fresh'"]
    with pytest.raises(RunMismatch, match="online.prompt_order: None -> 'fresh'"):
        check_resumable({"tag": "round_2", "fingerprint": saved}, fresh, "runs/x")
    # the schedule's options alike (weight_decay at its default, 0.0); a part with no option default to fall back on
    # (here a whole new section) is still a difference
    assert (
        differences({**saved, "schedule": {"lr": 1e-6}}, {**current, "schedule": {"lr": 1e-6, "weight_decay": 0.0}})
        == []
    )
    assert differences(saved, {**current, "extra": {"x": 1}}) == ["extra: None -> {'x': 1}"]


def test_the_manifest_takes_the_ranks_digests_of_their_shards_and_hashes_only_the_rest(tmp_path):
    """What the ranks report for their shards goes into the manifest unread by the driver (a rank that reported a
    wrong digest is caught when the checkpoint is checked); the driver hashes what it wrote itself."""

    class LyingPolicy(FakePolicy):
        def save_checkpoint(self, checkpoint_dir: str, tag: str) -> dict[str, list]:
            super().save_checkpoint(checkpoint_dir, tag)
            return {"rank0.pt": [5, "0" * 64]}

    store = CheckpointStore(tmp_path)
    store.save(LyingPolicy(), "step_2", {"step": 2})
    manifest = json.loads((tmp_path / "step_2" / MANIFEST).read_text())
    assert manifest["rank0.pt"] == [5, "0" * 64]
    state = (tmp_path / "step_2" / "run_state.json").read_bytes()
    assert manifest["run_state.json"] == [len(state), hashlib.sha256(state).hexdigest()]
    with pytest.raises(Exception, match="rank0.pt does not match its SHA-256"):
        CheckpointStore(tmp_path).latest()


def test_a_checkpoint_is_checked_by_the_hasher_it_is_given_and_by_names_and_sizes_alone_before_ray(tmp_path, caplog):
    """latest(hasher) hands every file of the manifest to hasher (the policy ranks, once they run) and trusts the
    checkpoint it checked for the rest of the process; hasher None reads no file's bytes: an altered file of the same
    size passes there and is caught by the hash."""
    from dpo_ray.file_digests import digests

    store = CheckpointStore(tmp_path)
    for step in (2, 4):
        store.save(FakePolicy(), f"step_{step}", {"step": step})
    (tmp_path / "step_4" / "rank0.pt").write_bytes(b"shaRd")
    asked = []

    def ranks(directory, names):
        asked.append((directory.name, sorted(names)))
        return digests(directory, names)

    later = CheckpointStore(tmp_path)
    assert later.latest(hasher=None)["tag"] == "step_4"
    assert later.latest(ranks)["tag"] == "step_2"
    assert asked == [(f"step_{s}", ["rank0.pt", "run_state.json"]) for s in (4, 2)]
    assert later.latest(ranks)["tag"] == "step_2" and [a[0] for a in asked[2:]] == ["step_4"]  # a good one: once


def test_round_checkpoints_are_written_every_k_rounds_and_after_the_last(tmp_path):
    from dpo_ray.campaign.round_store import RoundStore
    from dpo_ray.data.tokenize import TokenizeSettings

    store = RoundStore(tmp_path, keep_checkpoints=10, settings=TokenizeSettings(), every=2, last=5)
    rows = []
    for r in range(1, 6):
        rows.append({"round": r})
        store.finish(r, FakePolicy(), rows, {"step": r}, None)
        assert [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()] == rows
    assert store.checkpoints.complete() == ["round_2", "round_4", "round_5"]
    assert store.finished()["rows"] == rows


def test_a_checkpoint_loads_resharded_only_when_written_by_other_ranks_at_a_partitioned_stage(tmp_path):
    """Whole stage-0 states load on any number of ranks; stage 1-3 shards of another number are converted first."""
    store = CheckpointStore(tmp_path)
    store.save(FakePolicy(size=2, zero_stage=3), "step_1", {"step": 1})
    store.save(FakePolicy(size=2, zero_stage=0), "step_2", {"step": 2})
    states = {json.loads((tmp_path / t / "run_state.json").read_text())["tag"]: t for t in ("step_1", "step_2")}
    loads = []
    for tag, size in (("step_1", 2), ("step_1", 1), ("step_2", 1)):
        policy = FakePolicy(size=size)
        store.load(policy, json.loads((tmp_path / states[tag] / "run_state.json").read_text()))
        loads += policy.loaded
    assert loads == ["step_1", "step_1 resharded in .partial-universal-step_1", "step_2"]
    old = {"tag": "step_0", "step": 0}  # a checkpoint from before the writers were recorded: this very shape's
    policy = FakePolicy(size=4, zero_stage=3)
    store.load(policy, old)
    assert policy.loaded == ["step_0"]


def test_a_resumed_run_keeps_the_zero_stage_its_checkpoint_was_written_at():
    from dpo_ray.campaign.failures import CheckpointError
    from dpo_ray.schema import RunConfig, ZeroStage

    state = {"tag": "step_3", "policy": {"ranks": 2, "zero_stage": 2}}
    cfg = RunConfig()
    keep_written_stage(cfg, state)
    assert cfg.deepspeed.zero_stage == ZeroStage("2")
    keep_written_stage(cfg, state)  # the same stage given: nothing to say
    cfg.deepspeed.zero_stage = ZeroStage("3")
    with pytest.raises(CheckpointError, match="written at ZeRO stage 2, and DeepSpeed loads it at that stage only"):
        keep_written_stage(cfg, state)
    fresh = RunConfig()
    keep_written_stage(fresh, {"tag": "step_3"})  # an older checkpoint: auto decides as before
    keep_written_stage(fresh, None)
    assert fresh.deepspeed.zero_stage == ZeroStage("auto")


def test_a_finished_rounds_altered_pairs_are_named_on_resume_and_a_cut_rounds_file_is_rewritten(tmp_path, caplog):
    """An online run's own files after a crash or an edit: a finished round's pairs or samples that changed stop the
    resume naming the file (later rounds replay them); rounds.jsonl cut mid-line is rewritten from the checkpoint."""
    from dpo_ray.campaign.failures import CheckpointError
    from dpo_ray.campaign.round_store import RoundStore
    from dpo_ray.data.tokenize import TokenizeSettings

    store = RoundStore(tmp_path, keep_checkpoints=10, settings=TokenizeSettings())
    rows = [{"round": 0}]
    for r in (1, 2):
        pair = {
            "prompt": f"p{r}",
            "chosen": "a",
            "rejected": "b",
            "prompt_ids": [1],
            "chosen_ids": [2],
            "rejected_ids": [3],
        }
        store.save(r, [{"prompt": f"p{r}", "responses": ["a", "b"]}], [pair])
        rows.append({"round": r, "pairs": 1})
        store.finish(r, FakePolicy(), rows, {"step": r}, None)
    state = store.finished()
    store.check_finished(state)  # as finished: nothing to say
    rounds = tmp_path / "rounds.jsonl"
    whole = rounds.read_text()
    rounds.write_text(whole[:-7])  # a line cut by a crash
    with caplog.at_level("WARNING"):
        store.check_finished(state)
    assert rounds.read_text() == whole and "did not match round 2's checkpoint: rewritten from it" in caplog.text
    arrow = next((tmp_path / "rounds" / "round_001" / "pairs").glob("*.arrow"))
    content = bytearray(arrow.read_bytes())
    content[-20] ^= 0xFF  # one byte altered, the size kept
    arrow.write_bytes(bytes(content))
    with pytest.raises(CheckpointError, match=rf"round_001: {arrow.relative_to(tmp_path / 'rounds' / 'round_001')} "):
        store.check_finished(state)
    assert store.pairs(2)  # the other round is untouched
