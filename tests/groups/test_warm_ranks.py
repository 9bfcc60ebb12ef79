"""cluster.reuse_rank_processes: a stopped group's rank processes build the next group of its shape, and only when
they can (alive, the same environment); parked groups give their room back to a group that needs it."""

from __future__ import annotations

import os
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from dpo_ray.data.collate import collate_pairs
from dpo_ray.groups.policy_group import PolicyGroup
from dpo_ray.groups.reference_group import ReferenceGroup
from dpo_ray.logprobs import forward_pairs
from dpo_ray.workers.device import device_spec, rank_env

from ..conftest import make_pairs, save_model, tiny_config

pytestmark = pytest.mark.slow
ENV = rank_env(device_spec(0), threads=1)


def pids(group) -> list[int]:
    import ray

    return ray.get([actor.__ray_call__.remote(lambda _: os.getpid()) for actor in group.group.actors])


def gone(pid: int, wait_s: float = 30) -> bool:
    """Whether the process has exited (ray.kill returns before it does)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def scores_as_plain_torch(group: ReferenceGroup, model_dir: str) -> None:
    pairs = make_pairs(6, seed=3)
    chosen, rejected = group.logps(pairs, [[0, 1, 2], [3, 4, 5]])
    with torch.no_grad():
        out = forward_pairs(AutoModelForCausalLM.from_pretrained(model_dir), collate_pairs(pairs, 0))
    assert torch.allclose(torch.tensor(chosen), out.chosen_logps, atol=1e-5)
    assert torch.allclose(torch.tensor(rejected), out.rejected_logps, atol=1e-5)


def test_a_stopped_groups_processes_build_the_next_of_its_shape_only_when_they_can(
    local_ray, run_config, tiny_model_dir, tokenizer, tmp_path
):
    import ray

    cfg = run_config
    cfg.cluster.reference_ranks, cfg.reference.sharding = 2, "zero3"  # the ranks join a process group
    other = save_model(tmp_path / "other", LlamaForCausalLM, tiny_config(LlamaConfig, tokenizer), tokenizer, seed=1)

    first = ReferenceGroup(cfg, tiny_model_dir, ENV)
    kept = pids(first)
    first.shutdown()
    assert not any(gone(pid, wait_s=1) for pid in kept)  # parked, not killed
    second = ReferenceGroup(cfg, other, ENV)  # another model in the same processes and process group
    assert pids(second) == kept
    scores_as_plain_torch(second, other)
    second.shutdown()

    cfg.cluster.reference_ranks, cfg.reference.sharding = 1, "replicas"  # another shape: a new process
    smaller = ReferenceGroup(cfg, tiny_model_dir, ENV)
    assert set(pids(smaller)).isdisjoint(kept) and all(gone(pid) for pid in kept)
    kept = pids(smaller)
    ray.kill(smaller.group.actors[0])  # a group with a dead rank is not kept
    smaller.shutdown()
    after_death = ReferenceGroup(cfg, tiny_model_dir, ENV)
    assert set(pids(after_death)).isdisjoint(kept)
    scores_as_plain_torch(after_death, tiny_model_dir)
    kept = pids(after_death)
    after_death.shutdown()

    changed = ReferenceGroup(cfg, tiny_model_dir, {**ENV, "OMP_WAIT_POLICY": "PASSIVE"})  # another environment
    assert set(pids(changed)).isdisjoint(kept) and all(gone(pid) for pid in kept)
    kept = pids(changed)
    changed.shutdown()

    cfg.cluster.reuse_rank_processes = False
    fresh = ReferenceGroup(cfg, tiny_model_dir, {**ENV, "OMP_WAIT_POLICY": "PASSIVE"})
    assert set(pids(fresh)).isdisjoint(kept) and all(gone(pid) for pid in kept)
    kept = pids(fresh)
    fresh.shutdown()
    assert all(gone(pid) for pid in kept)  # not parked either


def test_parked_groups_give_their_room_back_to_a_group_that_needs_it(local_ray, run_config, tiny_model_dir):
    cfg = run_config
    cfg.cluster.reference_ranks, cfg.cluster.reference_cpus = 2, 4.0  # the whole 8-CPU cluster, once parked
    reference = ReferenceGroup(cfg, tiny_model_dir, ENV)
    kept = pids(reference)
    reference.shutdown()
    cfg.cluster.nodes_wait_s = 20  # the wait that would end in NoCapacity if the parked group kept its CPUs
    policy = PolicyGroup(cfg, tiny_model_dir, total_steps=1, accumulation=1, env=ENV)
    try:
        assert all(gone(pid) for pid in kept) and set(pids(policy)).isdisjoint(kept)
    finally:
        policy.shutdown()


def test_an_engine_built_in_a_kept_process_scores_its_own_model(
    local_ray, run_config, tiny_model_dir, tokenizer, tmp_path
):
    """A vLLM engine closed in place and another built in its process (another model): its log-probs are that
    model's by transformers, as a new process's engine gives them."""
    from dpo_ray.groups.rollout_group import RolloutGroup

    from .test_rollout_group import hf_token_logprobs, max_gap, prompt_logprobs

    torch.manual_seed(1)
    other = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    other.save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    run_config.rollout.kv_cache_memory_mb = 32
    sequences = [list(p.prompt_ids + p.chosen_ids) for p in make_pairs(4, seed=2)]
    first = RolloutGroup(run_config, tiny_model_dir, max_model_len=64)
    kept = pids(first)
    first.shutdown()
    engine = RolloutGroup(run_config, str(tmp_path / "other"), max_model_len=64)
    try:
        assert pids(engine) == kept
        scored = prompt_logprobs(engine, sequences)
    finally:
        engine.shutdown()
    assert max_gap(scored, hf_token_logprobs(other, sequences)) <= 1e-4
    assert max_gap(scored, hf_token_logprobs(AutoModelForCausalLM.from_pretrained(tiny_model_dir), sequences)) > 1e-3
