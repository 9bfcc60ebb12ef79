"""A policy or a reference rank gets only what it reads of the run's configuration, cut from it on the driver."""

from __future__ import annotations

import ast
from dataclasses import fields
from importlib.util import find_spec
from pathlib import Path

import pytest

from dpo_ray.schema import RunConfig
from dpo_ray.workers.specs import PolicySpec, ReferenceSpec


def configured() -> RunConfig:
    """Every option a rank reads moved off its default, and options it must not see set too."""
    cfg = RunConfig()
    cfg.cache_dir, cfg.output_dir, cfg.model.path = "/cache", "/elsewhere", "/not-read"
    cfg.model.dtype, cfg.model.attn_implementation, cfg.model.logits_chunk_mb = "bfloat16", "eager", 64
    cfg.model.trust_remote_code, cfg.model.disable_dropout, cfg.model.gradient_checkpointing = True, False, True
    cfg.model.lora.enabled, cfg.model.lora.r = True, 4
    cfg.data.layout, cfg.data.pack_length = "packed", 128
    cfg.algo.beta, cfg.algo.ld_alpha = 0.3, 0.5
    cfg.train.lr, cfg.train.seed = 1e-3, 7
    cfg.deepspeed.offload_optimizer = "cpu"
    cfg.cluster.gpus_per_rank, cfg.cluster.cpus_per_rank, cfg.cluster.torch_threads = 1.0, 4.0, 3
    cfg.cluster.reference_cpus, cfg.cluster.sequence_parallel_size, cfg.model.mlp_tiles = 2.0, 2, 8
    return cfg


def test_a_policy_spec_carries_the_values_a_policy_rank_reads():
    spec = PolicySpec.of(configured())
    assert (spec.gpus_per_rank, spec.cpus_per_rank, spec.torch_threads) == (1.0, 4.0, 3)
    assert (spec.dtype, spec.attn_implementation, spec.logits_chunk_mb) == ("bfloat16", "eager", 64)
    assert (spec.trust_remote_code, spec.disable_dropout, spec.gradient_checkpointing) == (True, False, True)
    assert (spec.lora.enabled, spec.lora.r, spec.layout, spec.pack_length) == (True, 4, "packed", 128)
    assert (spec.algo.beta, spec.algo.ld_alpha, spec.train.lr, spec.train.seed) == (0.3, 0.5, 1e-3, 7)
    assert (spec.deepspeed.offload_optimizer, spec.cache_dir) == ("cpu", "/cache")
    assert spec.syncs_adapter  # a LoRA policy on GPUs, adapter servable, lora_sync=auto: engines take the adapter
    assert (spec.sequence_parallel_size, spec.mlp_tiles) == (2, 8)


@pytest.mark.parametrize(
    "change",
    [
        lambda cfg: setattr(cfg.model.lora, "enabled", False),  # full weights
        lambda cfg: setattr(cfg.model.lora, "use_dora", True),  # vLLM cannot serve DoRA
        lambda cfg: setattr(cfg.cluster, "gpus_per_rank", 0.0),  # CPU engines take merged weights
        lambda cfg: setattr(cfg.rollout, "lora_sync", "merged"),
    ],
)
def test_a_policy_spec_says_when_engines_take_merged_weights(change):
    cfg = configured()
    change(cfg)
    assert not PolicySpec.of(cfg).syncs_adapter


def test_a_reference_spec_carries_the_values_a_reference_rank_reads():
    cfg = configured()
    assert ReferenceSpec.of(cfg) == ReferenceSpec(
        gpus_per_rank=1.0,
        cpus_per_rank=2.0,  # cluster.reference_cpus
        torch_threads=3,
        dtype="bfloat16",
        attn_implementation="eager",
        trust_remote_code=True,
        disable_dropout=False,
        logits_chunk_mb=64,
        layout="packed",
        pack_length=128,
        ld_alpha=0.5,
        deepspeed=cfg.deepspeed,
        sequence_parallel_size=2,
    )
    cfg.cluster.reference_cpus = 0.0
    assert ReferenceSpec.of(cfg).cpus_per_rank == 4.0  # 0: a policy rank's


def source(module: str) -> str:
    return Path(find_spec(module).origin).read_text()


def read_options(module: str) -> set[str]:
    """The attributes the module reads off `cfg` or `self.cfg`."""
    is_cfg = lambda node: (
        (isinstance(node, ast.Name) and node.id == "cfg")
        or (isinstance(node, ast.Attribute) and node.attr == "cfg" and isinstance(node.value, ast.Name))
    )
    tree = ast.parse(source(module))
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and is_cfg(node.value)}


@pytest.mark.parametrize(
    "module, spec", [("dpo_ray.workers.policy", PolicySpec), ("dpo_ray.workers.reference", ReferenceSpec)]
)
def test_each_worker_reads_every_field_of_its_spec_and_never_the_run_config(module, spec):
    assert read_options(module) == {f.name for f in fields(spec)}
    assert "RunConfig" not in source(module)
