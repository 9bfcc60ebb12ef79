"""report_to: each tracker gets the run's metrics by step, its config and the report's plots; read back from the
trackers' own files (W&B offline, MLflow's file store, TensorBoard's events)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from dpo_ray.compose import compose
from dpo_ray.report.trackers import report_problems
from dpo_ray.validation import ConfigError


def wandb_records(run_dir: Path) -> tuple[list[dict], dict, set[str]]:
    """(history rows, config, run names) of the offline W&B runs under run_dir, read from their .wandb files: W&B's
    header, then a LevelDB log (32 KiB blocks of chunks: checksum, length, type) of protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    history, config, names = [], {}, set()
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, pos, record = path.read_bytes(), 7, b""
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            if left < 7:
                pos += left
                continue
            _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            if kind == 0 and length == 0:
                pos += left
                continue
            record, pos = record + data[pos + 7 : pos + 7 + length], pos + 7 + length
            if kind in (1, 4):  # a whole record, or the last chunk of one
                parsed = pb.Record()
                parsed.ParseFromString(record)
                record, which = b"", parsed.WhichOneof("record_type")
                if which == "history":
                    items = parsed.history.item
                    history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
                elif which == "run":
                    names.add(parsed.run.display_name)
                    config.update({i.key: json.loads(i.value_json) for i in parsed.run.config.update})
    return history, config, names


@pytest.mark.parametrize(
    "report_to, expected",
    [
        ("[tensorboard,comet]", "unknown tracker 'comet' (allowed: tensorboard, wandb, mlflow, none)"),
        ("[none,wandb]", "none means no tracker; it cannot be given with others"),
    ],
)
def test_report_to_names_known_trackers(report_to, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        compose([f"report_to={report_to}"])


def test_a_tracker_whose_package_is_missing_is_named_with_its_install_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert report_problems(["wandb"]) == [
        "report_to=['wandb']: wandb needs its package, which is not installed: pip install wandb "
        "(or the extra: pip install 'dpo-ray[wandb]')"
    ]


def test_report_to_takes_one_name_a_comma_list_or_a_list():
    assert compose(["report_to=wandb"]).report_to == ["wandb"]
    assert compose(["report_to='wandb,mlflow'"]).report_to == ["wandb", "mlflow"]
    assert compose(["report_to=[wandb,mlflow]"]).report_to == ["wandb", "mlflow"]
    assert compose(["report_to=none"]).report_to == ["none"]
    assert compose([]).report_to == ["tensorboard"]
