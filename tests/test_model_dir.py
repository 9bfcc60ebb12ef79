"""The model-directory checks against safetensors' own loader: every damaged copy it refuses is named (with its path)
before a run starts, and an intact one passes."""

from __future__ import annotations

import json
import shutil
import struct

import torch
from safetensors.torch import load_file, save_file

from dpo_ray.model_dir import cache_damage, has_tokenizer, safetensors_problem, weights_problem


def damaged(original: bytes) -> dict[str, bytes]:
    """Copies of a safetensors file as they arrive damaged: cut anywhere, grown, garbled in the header."""
    (length,) = struct.unpack("<Q", original[:8])
    header = json.loads(original[8 : 8 + length])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"] = [0, "x"]
    bad_offsets = json.dumps(header).encode()
    return {
        "intact": original,
        "cut by one byte": original[:-1],
        "cut in its data": original[: len(original) // 2],
        "cut in its header": original[: 8 + length // 2],
        "shorter than the length field": original[:5],
        "a byte too many": original + b"\0",
        "header length garbled": b"\xff" * 8 + original[8:],
        "header not JSON": original[:8] + b"{" * length + original[8 + length :],
        "offsets not numbers": struct.pack("<Q", len(bad_offsets)) + bad_offsets + original[8 + length :],
    }


def test_a_weights_file_is_refused_exactly_when_safetensors_cannot_load_it(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a.weight": torch.randn(16, 8), "b.bias": torch.arange(5, dtype=torch.int64)}, path)
    for what, content in damaged(path.read_bytes()).items():
        path.write_bytes(content)
        try:
            load_file(path)
            loads = True
        except Exception:
            loads = False
        problem = safetensors_problem(path)
        assert (problem is None) == loads, (what, problem)
        if problem:
            assert "copy it again" in problem or "too short" in problem, (what, problem)


def test_a_sharded_directory_names_its_missing_shard_and_its_damaged_one(tmp_path):
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        save_file({"w": torch.ones(4)}, tmp_path / shard)
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert weights_problem(tmp_path) is None
    second = tmp_path / "model-00002-of-00002.safetensors"
    second.write_bytes(second.read_bytes()[:-3])
    assert weights_problem(tmp_path).startswith(f"{second}: its tensors need")
    second.unlink()
    assert "names 1 shard(s) that are not there: model-00002-of-00002.safetensors" in weights_problem(tmp_path)


def test_tokenizer_files_of_every_kind_count_and_a_damaged_cache_is_told_apart(tmp_path, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    assert cache_damage(model) is None and has_tokenizer(model)
    (model / "tokenizer.json").unlink()
    assert cache_damage(model) == "no tokenizer files"
    for name in ("tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "qwen.tiktoken"):
        (model / name).write_text("")
        assert has_tokenizer(model), name
        (model / name).unlink()
    (model / "tokenizer.json").write_text("{}")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert cache_damage(model).startswith(f"{weights}: ")
    weights.unlink()
    assert cache_damage(model) == "no safetensors weights"


def test_a_damaged_built_in_model_in_the_cache_is_built_again(tmp_path, tiny_model_dir, monkeypatch):
    """A cached built-in model that was cut (a full disk, a copy stopped half-way) is converted again, not loaded."""
    from dpo_ray.tasks import pretrained

    built = []

    def build(out):
        built.append(out)
        shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)

    monkeypatch.setitem(pretrained.PRETRAINED, "smollm2-135m", build)
    root = pretrained.ensure_pretrained("smollm2-135m", str(tmp_path))
    assert len(built) == 1 and pretrained.ensure_pretrained("smollm2-135m", str(tmp_path)) == root and len(built) == 1
    weights = tmp_path / "models" / "smollm2-135m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    assert pretrained.ensure_pretrained("smollm2-135m", str(tmp_path)) == root and len(built) == 2
    assert safetensors_problem(weights) is None
