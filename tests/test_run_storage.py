"""Runs kept in object storage, against a local S3 server (moto) on 127.0.0.1: an upload cut after any file leaves
the bucket naming a complete checkpoint, a new machine's mirror resumes from it, and a run stopped by a signal
resumes from its bucket alone."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

import dpo_ray
from dpo_ray.campaign import interrupts
from dpo_ray.campaign.checkpoints import verify
from dpo_ray.run_storage import RunStorage, StorageError, mirror_of, problems

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def bucket():
    """A bucket on a moto S3 server on 127.0.0.1, reached as any S3 endpoint is (AWS_ENDPOINT_URL)."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    saved = {k: os.environ.get(k) for k in [*CREDENTIALS, "AWS_ENDPOINT_URL"]}
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=f"http://{host}:{port}")
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket="runs")
    yield client
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def keys(client, prefix: str) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket="runs", Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :]: client.get_object(Bucket="runs", Key=o["Key"])["Body"].read() for o in listed}


def write_checkpoint(run_dir: Path, tag: str, shard: bytes) -> None:
    """A checkpoint as CheckpointStore leaves one: its files, a manifest of their sizes and SHA-256, the pointer."""
    import hashlib

    directory = run_dir / "checkpoints" / tag
    directory.mkdir(parents=True)
    (directory / "mp_rank_00_model_states.pt").write_bytes(shard)
    (directory / "run_state.json").write_text(json.dumps({"tag": tag}))
    files = {p.name: [p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()] for p in directory.iterdir()}
    (directory / "manifest.json").write_text(json.dumps(files))
    (run_dir / "checkpoints" / "latest").write_text(tag)
    with open(run_dir / "metrics.jsonl", "a") as rows:
        rows.write(json.dumps({"step": int(tag.split("_")[1])}) + "\n")


class CutAfter(RunStorage):
    """A connection that drops after `left` more files."""

    left = 0

    def _put(self, relative: str) -> None:
        if self.left == 0:
            raise StorageError(f"connection lost before {relative}")
        self.left -= 1
        super()._put(relative)


def test_an_upload_cut_after_any_file_leaves_a_complete_checkpoint_named_and_the_next_upload_finishes_it(
    bucket, tmp_path
):
    uri = "s3://runs/cut"
    mirror = tmp_path / "mirror"
    write_checkpoint(mirror, "step_2", b"a" * 1000)
    (mirror / ".dpo-ray.lock").write_text("{}")  # the run lock stays local
    first = RunStorage(uri, mirror)
    first.ready = True
    assert first.upload() == 5  # the shard, run_state, manifest, metrics, pointer
    assert ".dpo-ray.lock" not in keys(bucket, "cut/")
    write_checkpoint(mirror, "step_4", b"b" * 2000)
    shutil.rmtree(mirror / "checkpoints" / "step_2")  # pruned: the bucket drops it after the new pointer
    for cut in range(5):  # shard, run_state, manifest, metrics, pointer of step_4
        storage = CutAfter(uri, mirror)
        storage.ready, storage.left = True, cut
        with pytest.raises(StorageError, match="connection lost"):
            storage.upload()
        elsewhere = tmp_path / f"elsewhere-{cut}"  # a new machine fills its mirror from the bucket
        RunStorage(uri, elsewhere).download()
        tag = (elsewhere / "checkpoints" / "latest").read_text()
        assert tag == "step_2", cut  # the pointer is sent last: the bucket still names the complete step_2
        assert verify(elsewhere / "checkpoints" / tag) is None, cut
        assert not (elsewhere / "checkpoints" / "step_4").exists() or cut >= 3  # no manifest: never downloaded
        (mirror / ".synced.json").unlink()  # the next cut starts from the same bucket state: all of step_4 again
    done = RunStorage(uri, mirror)
    done.ready = True
    done.upload()
    stored = keys(bucket, "cut/")
    assert stored["checkpoints/latest"] == b"step_4"
    assert not [k for k in stored if k.startswith("checkpoints/step_2/")]  # pruned in the bucket too
    fresh = tmp_path / "fresh"
    RunStorage(uri, fresh).download()
    assert verify(fresh / "checkpoints" / "step_4") is None
    assert (fresh / "metrics.jsonl").read_text() == (mirror / "metrics.jsonl").read_text()


def test_only_changed_files_are_sent_again(bucket, tmp_path):
    mirror = tmp_path / "mirror"
    write_checkpoint(mirror, "step_1", b"x" * 10)
    storage = RunStorage("s3://runs/changed", mirror)
    storage.ready = True
    assert storage.upload() == 5
    assert storage.upload() == 0
    write_checkpoint(mirror, "step_2", b"y" * 10)
    assert storage.upload() == 5  # step_2's three files, metrics.jsonl, the pointer


def test_object_storage_options_are_checked_when_composed(tmp_path):
    assert problems("s3://runs/x", str(tmp_path)) == [] and problems(str(tmp_path), str(tmp_path)) == []
    assert problems("hdfs://runs/x", str(tmp_path)) == [
        "output_dir=hdfs://runs/x: a URI must be s3://bucket/path or gs://bucket/path"
    ]
    with pytest.raises(ValueError, match=r"cache_dir=s3://runs/cache: must be a local or shared path"):
        dpo_ray.config("cache_dir=s3://runs/cache")


@pytest.mark.slow
def test_a_run_stopped_by_a_signal_resumes_on_a_new_machine_from_its_bucket_alone(
    bucket, local_ray, tmp_path, task_cache_dir
):
    """SIGTERM (Slurm's preemption) after the first checkpoint: the bucket gets the run as it stood; a machine with
    an empty mirror resumes from the bucket's checkpoint, every step is logged once, and the bucket ends holding the
    final model, the report and the last checkpoint."""
    from dpo_ray.tasks.number_words import prompt, to_words

    rows = [
        {"prompt": prompt(n), "chosen": to_words(n), "rejected": to_words(n).replace("-", " ")}
        for n in range(21, 64)
        if n % 10
    ]
    uri = "s3://runs/preempted"
    options = [f"output_dir={uri}", f"cache_dir={task_cache_dir}", "model.path=embedded", "train.epochs=2"]
    cfg = dpo_ray.config(*options, "train.batch_size=8", "train.checkpoint_every=2", "progress=false")
    mirror = mirror_of(uri, task_cache_dir)
    shutil.rmtree(mirror, ignore_errors=True)

    def stop_after_the_first_checkpoint_reaches_the_bucket():
        deadline = time.monotonic() + 300
        while "checkpoints/latest" not in keys(bucket, "preempted/") and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    saved = {s: signal.getsignal(s) for s in interrupts.EXIT_CODES}
    stopper = threading.Thread(target=stop_after_the_first_checkpoint_reaches_the_bucket, daemon=True)
    try:
        interrupts.install()  # as the CLI does
        stopper.start()
        with pytest.raises(BaseException) as caught:
            dpo_ray.train(cfg, train_dataset=rows)
        assert interrupts.interruption(caught.value) is not None, caught.value
    finally:
        stopper.join(timeout=10)
        interrupts.forget()
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    stored = keys(bucket, "preempted/")
    assert b"the run stopped" in stored["driver.log"] or b"SIGTERM" in stored["driver.log"]  # sent on the way out
    shutil.rmtree(mirror)  # a new machine: nothing but the bucket
    result = dpo_ray.train(cfg, train_dataset=rows)
    assert result.resumed_from is not None and result.run_dir == mirror
    held_out = min(max(1, round(cfg.data.eval_fraction * len(rows))), len(rows) - 1)  # split_eval's rule, by hand
    steps = [row["step"] for row in result.metrics if "loss" in row]
    assert steps == list(range(1, 2 * math.ceil((len(rows) - held_out) / 8) + 1))  # each step once, across machines
    stored = keys(bucket, "preempted/")
    assert "final/model.safetensors" in stored and "report.md" in stored and "summary.md" in stored
    tag = stored["checkpoints/latest"].decode()
    assert json.loads(stored[f"checkpoints/{tag}/manifest.json"]).keys() == {
        k.split("/", 2)[2] for k in stored if k.startswith(f"checkpoints/{tag}/") and not k.endswith("manifest.json")
    }
    assert json.loads(stored["attempts.jsonl"].splitlines()[-1])["resumed_from"] == result.resumed_from
