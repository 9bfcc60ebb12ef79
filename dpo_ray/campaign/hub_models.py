"""Model options given as Hugging Face Hub ids (OWNER/NAME), as transformers takes them: read from the local HF cache,
downloaded into it first when it lacks them and the network is allowed, and replaced by the local directory before
Ray starts, so that every rank loads the same files and nothing is fetched at run time."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ..schema import RunConfig
from .preflight import InputError

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
WEIGHTS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]  # never pickles (*.bin)
CONFIG_ONLY = ["*.json"]  # what a plan reads
# The options that name a model: a directory, a built-in name (see resolve_hub_models) or a Hub id.
HUB_OPTIONS = ("model.path", "model.reference_path", "reward.model_path", "reward.judge_model", "eval.judge_model")


def is_hub_id(value: str) -> bool:
    """OWNER/NAME that is not a path on this machine."""
    return bool(HUB_ID.fullmatch(value)) and not Path(value).expanduser().exists()


def hub_cache() -> str:
    """The HF cache, read when asked (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def local_dir(option: str, repo_id: str, patterns: list[str]) -> str:
    """repo_id's snapshot directory in the HF cache, downloaded first when absent and the network is allowed."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache()
    try:
        found = snapshot_download(repo_id, cache_dir=cache, allow_patterns=patterns, local_files_only=True)
        log.info("%s=%s: the local HF cache's copy, %s", option, repo_id, found)
        return found
    except LocalEntryNotFoundError:
        pass
    if offline():
        raise InputError(
            f"{option}={repo_id}: not in the local Hugging Face cache ({cache}), and HF_HUB_OFFLINE=1 forbids a "
            f"download: fetch it where the network is allowed (hf download {repo_id}), or give a directory"
        )
    print(f"{option}={repo_id}: downloading from the Hugging Face Hub into {cache} (once: later runs read it there)")
    try:
        return snapshot_download(repo_id, cache_dir=cache, allow_patterns=patterns)
    except Exception as error:  # no network, no such repo, gated: each says so in its message
        raise InputError(f"{option}={repo_id}: not a directory here, and the Hub download failed: {error}") from None


def resolve_hub_models(cfg: RunConfig, config_only: bool = False) -> None:
    """Replace each model option given as a Hub id by its local directory (config_only: just the JSON files, what a
    plan reads). Built-in names are left for their own resolution."""
    from ..tasks.registry import JUDGE_MODELS, MODELS, REWARD_MODELS

    builtins = {
        "model.path": MODELS,
        "reward.model_path": REWARD_MODELS,
        "reward.judge_model": JUDGE_MODELS,
        "eval.judge_model": JUDGE_MODELS,
    }
    for option in HUB_OPTIONS:
        section, name = option.split(".")
        value = getattr(getattr(cfg, section), name)
        if value and value not in builtins.get(option, ()) and is_hub_id(value):
            path = local_dir(option, value, CONFIG_ONLY if config_only else WEIGHTS)
            setattr(getattr(cfg, section), name, path)
