"""Shared fixtures: tiny tokenizer and model built on the fly once per session, a Ray cluster per test module."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray starts its workers at nice 15: on a CI box shared with other jobs the ranks and engines would wait behind every
# other process (beside one busy core, 2026-12-07: 2399 s at nice 15, 2193 s at nice 0); Ray's clusters read it.
os.environ.setdefault("RAY_worker_niceness", "0")

import dpo_ray  # noqa: F401  first, as in `dpo-ray`: it sets OpenMP's spin count before torch loads

# isort: split
import pytest
import torch

from dpo_ray.data.tokenize import TokenizedPair
from dpo_ray.schema import RunConfig
from dpo_ray.tasks import number_words
from dpo_ray.tasks.embedded import build_model, build_tokenizer

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tokenizer():
    rng = random.Random(0)
    corpus = [number_words.prompt(n) + " " + number_words.flawed_words(n, rng, 0.5) for n in range(1000)]
    return build_tokenizer(corpus)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A randomly initialised 0.4M-parameter Llama with the task tokenizer, saved as an HF directory."""
    path = tmp_path_factory.mktemp("tiny-model")
    build_model(tokenizer, seed=0).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


TINY_SHAPE = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


def tiny_config(config_class, tokenizer=None, **overrides):
    """The suite's one tiny shape (TINY_SHAPE) in any transformers family, with the task tokenizer's vocabulary and
    pad id when given; overrides name what a test needs beyond it (labels, experts, a wider head)."""
    vocab = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id) if tokenizer is not None else {}
    return config_class(**{**TINY_SHAPE, **vocab, **overrides})


def save_model(path, model_class, config, tokenizer=None, seed: int = 0) -> str:
    """A randomly initialised model_class(config), seeded, saved as an HF directory (with the tokenizer when given)."""
    torch.manual_seed(seed)
    model_class(config).save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def reward_model_dir(tmp_path_factory, tokenizer):
    """A randomly initialised Llama sequence classifier (one label) with the task tokenizer."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = tiny_config(LlamaConfig, tokenizer, num_labels=1)
    return save_model(tmp_path_factory.mktemp("reward-model"), LlamaForSequenceClassification, config, tokenizer)


def make_pairs(n: int, seed: int = 0, vocab: int = 300) -> list:
    """Synthetic pairs of varied lengths (ids above the special tokens)."""
    rng = random.Random(seed)
    ids = lambda k: tuple(rng.randrange(5, vocab) for _ in range(k))
    return [TokenizedPair(ids(rng.randint(2, 9)), ids(rng.randint(1, 7)), ids(rng.randint(1, 7))) for _ in range(n)]


@pytest.fixture
def run_config(tmp_path) -> RunConfig:
    return exact_config(tmp_path)


def exact_config(root) -> RunConfig:
    """A small, exact configuration: SGD, no clipping, constant learning rate, one CPU thread per rank, rank processes
    kept for the next group of their shape."""
    cfg = RunConfig()
    cfg.output_dir = str(root / "run")
    cfg.cache_dir = str(root / "cache")
    cfg.progress = False
    cfg.train.optimizer, cfg.train.lr, cfg.train.max_grad_norm = "sgd", 0.1, 0.0
    cfg.train.lr_scheduler, cfg.train.warmup_steps = "constant", 0.0
    cfg.train.batch_size, cfg.train.micro_batch_size = 8, 2
    cfg.algo.rpo_alpha = 0.5
    cfg.cluster.cpus_per_rank = 1.0
    cfg.cluster.reuse_rank_processes = True  # a rank's start is ~5 s of imports; tests that need new ones say so
    return cfg


def run_wide_dir(tmp_path_factory, name: str) -> Path:
    """A directory every pytest-xdist worker of this run shares (make test runs two): what is built in it is built
    once per run, the builders taking turns (dpo_ray.atomic.build_once, torch's lock on its extensions)."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def task_cache_dir(tmp_path_factory):
    """One cache for the tests that build the embedded task (26 s) or convert a pretrained model: built once a run."""
    return run_wide_dir(tmp_path_factory, "task-cache")


@pytest.fixture(scope="session")
def ops_cache_dir(tmp_path_factory):
    """One cache_dir for the tests that run DeepSpeed's CPU Adam: its C++ op builds there once a run (35 s)."""
    return str(run_wide_dir(tmp_path_factory, "ops-cache"))


@contextmanager
def short_ray_tmpdir():
    """RAY_TMPDIR set to a new directory under /tmp, removed after: Ray's socket paths (RAY_TMPDIR/ray/session_<time>_
    <pid>/sockets/plasma_store) must fit in 107 bytes, and an xdist worker's pytest temp path leaves no room."""
    path, before = tempfile.mkdtemp(prefix="ray-", dir="/tmp"), os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = path
    try:
        yield Path(path)
    finally:
        if before is None:
            del os.environ["RAY_TMPDIR"]
        else:
            os.environ["RAY_TMPDIR"] = before
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray per test module (Ray start-up costs ~10 s), started again as a run's when a busy box delays it."""
    import ray

    from dpo_ray.campaign.local_ray import start

    with short_ray_tmpdir():
        start(lambda: ray.init(num_cpus=8, include_dashboard=False, object_store_memory=256 << 20, log_to_driver=False))
        yield ray
        ray.shutdown()
