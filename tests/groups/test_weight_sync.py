"""Weight sync into engines of their own: a killed engine fails the sync without a hang, and a LoRA policy syncs into a
tensor-parallel engine (two CPU workers), its adapter alone or its merged weights."""

from __future__ import annotations

import time

import pytest
from transformers import AutoModelForCausalLM

from dpo_ray.data.batches import build_micro_batches, step_scale
from dpo_ray.groups.policy_group import PolicyGroup
from dpo_ray.groups.rollout_group import RolloutGroup
from dpo_ray.groups.weight_sync import WeightSync
from dpo_ray.workers.device import device_spec, rank_env

from ..conftest import make_pairs, save_model, tiny_config
from .test_rollout_group import hf_token_logprobs, max_gap

pytestmark = pytest.mark.slow


def test_a_sync_into_a_killed_engine_fails_with_the_lost_actor_not_a_hang(local_ray, run_config, tiny_model_dir):
    import ray
    from ray.exceptions import RayActorError

    cfg = run_config
    cfg.cluster.rollout_engines, cfg.rollout.kv_cache_memory_mb, cfg.cluster.call_timeout_s = 2, 32, 120
    engines = RolloutGroup(cfg, tiny_model_dir, max_model_len=64)
    policy = PolicyGroup(cfg, tiny_model_dir, total_steps=1, accumulation=1, env=rank_env(device_spec(0), threads=1))
    try:
        sync = WeightSync(cfg, policy, engines)
        sync.bucket_bytes = 4096
        ray.kill(engines.group.actors[1])
        began = time.monotonic()
        with pytest.raises(RayActorError):  # what the campaign's restart path catches
            sync()
        assert time.monotonic() - began < 60
    finally:
        policy.shutdown()
        engines.shutdown()


def greedy_logprobs(rollout, prompts, max_tokens=6):
    """Each prompt's greedy continuation on engine 0 and the log-probs of its tokens, through the engine's adapter
    (vLLM's prompt log-probs fail with LoRA in a tensor-parallel engine; sampled tokens' log-probs do not)."""
    import ray

    def draw(actor):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        outputs = actor.worker.llm.generate(
            [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompts],
            SamplingParams(max_tokens=max_tokens, logprobs=0, temperature=0, ignore_eos=True),
            use_tqdm=False,
            lora_request=actor.worker.adapter,
        )
        return [
            (list(c.token_ids), [step[t].logprob for step, t in zip(c.logprobs, c.token_ids)])
            for c in (out.outputs[0] for out in outputs)
        ]

    drawn = ray.get(rollout.group.actors[0].__ray_call__.remote(draw))
    return [d for d, _ in drawn], [scores for _, scores in drawn]


@pytest.mark.parametrize("adapters", [True, False], ids=["adapter", "merged"])
def test_a_lora_policy_syncs_into_a_tensor_parallel_engine(local_ray, run_config, tiny_model_dir, tmp_path, adapters):
    """Two CPU workers in one engine (vLLM's multiprocessing executor), each a rank of the sync group; with adapters
    on, only the LoRA tensors travel and the engine generates through the adapter."""
    cfg = run_config
    cfg.model.lora.enabled, cfg.model.lora.save_merged = True, True
    cfg.rollout.lora_sync = "adapter" if adapters else "merged"
    cfg.train.optimizer, cfg.train.lr = "adamw", 0.05
    cfg.rollout.tensor_parallel_size, cfg.cluster.rollout_cpus, cfg.rollout.kv_cache_memory_mb = 2, 2, 32
    pairs = make_pairs(4, seed=22)
    prompts = [p.prompt_ids + p.chosen_ids for p in pairs]
    engine = RolloutGroup(cfg, tiny_model_dir, max_model_len=64)
    policy = PolicyGroup(cfg, tiny_model_dir, total_steps=2, accumulation=2, env=rank_env(device_spec(0), threads=1))
    try:
        sync = WeightSync(cfg, policy, engine)
        _, plan = build_micro_batches(pairs, range(4), 1, 2, ([-30.0] * 4, [-30.0] * 4), per_rank=2)
        for _ in range(2):  # peft starts B at zero: the second step makes the adapter matter
            policy.train_step(plan, step_scale(pairs))
        sent = sync()
        specs, adapter_config = policy.weight_manifest()
        policy.save_pretrained(str(tmp_path / "adapter"))
        drawn, after = greedy_logprobs(engine, prompts)
    finally:
        policy.shutdown()
        engine.shutdown()
    sequences = [list(p) + list(d) for p, d in zip(prompts, drawn)]
    tail = lambda scores: [s[-len(d) :] for s, d in zip(scores, drawn)]  # noqa: E731
    merged = hf_token_logprobs(AutoModelForCausalLM.from_pretrained(tmp_path / "adapter" / "merged"), sequences)
    base = hf_token_logprobs(AutoModelForCausalLM.from_pretrained(tiny_model_dir), sequences)
    assert max_gap(after, tail(merged)) <= 1e-4
    assert max_gap(after, tail(base)) > 1e-3
    whole = sum(p.numel() * 4 for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    if adapters:
        assert adapter_config is not None and all(".lora_" in name for name, _, _ in specs)
        assert sent < 0.3 * whole  # rank 8 on a 64-wide toy model; on a 7B model the adapter is ~0.1-1%
    else:
        assert adapter_config is None and sent >= whole


@pytest.fixture(scope="module")
def tiny_moe_dir(tmp_path_factory, tokenizer):
    """A randomly initialised Mixtral (4 experts, 2 active) with the task tokenizer, saved as an HF directory: its
    checkpoint holds experts one by one, transformers holds them fused (mlp.experts.gate_up_proj, down_proj)."""
    from transformers import MixtralConfig, MixtralForCausalLM

    config = tiny_config(
        MixtralConfig,
        tokenizer,
        hidden_size=128,  # head_dim 32: vLLM's CPU attention has no kernel for 16
        intermediate_size=96,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=256,
    )
    return save_model(tmp_path_factory.mktemp("tiny-moe"), MixtralForCausalLM, config, tokenizer)


def test_a_moe_policy_syncs_its_fused_experts_one_by_one_and_the_engine_scores_as_it_does(
    local_ray, run_config, tiny_moe_dir, tmp_path
):
    """2 ZeRO-3 ranks of a Mixtral take a step; the sync sends each expert's w1, w2, w3 under the checkpoint's names
    (vLLM's loaders read those, not transformers' fused tensors), and the engine's log-probs equal the trained
    policy's saved and reloaded by transformers."""
    from .test_rollout_group import prompt_logprobs

    cfg = run_config
    cfg.cluster.policy_ranks, cfg.train.lr, cfg.deepspeed.zero_stage = 2, 1.0, "3"
    cfg.rollout.engine_process, cfg.rollout.kv_cache_memory_mb = "separate", 32
    pairs = make_pairs(8, seed=23)
    sequences = [list(p.prompt_ids + p.chosen_ids) for p in pairs[:4]]
    engine = RolloutGroup(cfg, tiny_moe_dir, max_model_len=64)
    policy = PolicyGroup(cfg, tiny_moe_dir, total_steps=1, accumulation=2, env=rank_env(device_spec(0), threads=1))
    try:
        sync = WeightSync(cfg, policy, engine)
        start = prompt_logprobs(engine, sequences)
        _, plan = build_micro_batches(pairs, range(8), 2, 2, ([-30.0] * 8, [-30.0] * 8), per_rank=2)
        policy.train_step(plan, step_scale(pairs))
        sync()
        specs, _ = policy.weight_manifest()
        policy.save_pretrained(str(tmp_path / "trained"))
        after = prompt_logprobs(engine, sequences)
    finally:
        policy.shutdown()
        engine.shutdown()
    names = {name for name, _, _ in specs}
    expert = {
        f"model.layers.{i}.block_sparse_moe.experts.{e}.w{k}.weight"
        for i in (0, 1)
        for e in range(4)
        for k in (1, 2, 3)
    }
    assert expert <= names and not any("gate_up_proj" in n or "experts.down_proj" in n for n in names)
    trained = hf_token_logprobs(AutoModelForCausalLM.from_pretrained(tmp_path / "trained"), sequences)
    assert max_gap(after, trained) <= 1e-4
    assert max_gap(after, start) > 1e-2
