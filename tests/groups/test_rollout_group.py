"""The rollout group (real vLLM engines on CPU, as Ray actors),
weight sync streamed from ZeRO-3 policy ranks over a gloo group (full weights, LoRA adapters, a tensor-parallel engine),
and the reward group, all through Ray."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from dpo_ray.data.batches import build_micro_batches, step_scale
from dpo_ray.groups.policy_group import PolicyGroup
from dpo_ray.groups.reward_group import RewardGroup
from dpo_ray.groups.rollout_group import RolloutGroup
from dpo_ray.groups.weight_sync import WeightSync
from dpo_ray.reward_source import reward_source
from dpo_ray.schema import RunConfig
from dpo_ray.tasks.number_words import prompt
from dpo_ray.workers.device import device_spec, rank_env

from ..conftest import make_pairs

pytestmark = pytest.mark.slow
CHAT = [[{"role": "user", "content": prompt(n)}] for n in range(6)]


@pytest.fixture(scope="module")
def rollout(local_ray, tiny_model_dir):
    cfg = RunConfig()
    cfg.cluster.rollout_engines, cfg.rollout.kv_cache_memory_mb = 2, 64
    # In the actors' processes (~8 s a start instead of ~25 s): the syncs through vLLM's RPC into an engine core of
    # its own, as on a GPU, are test_weight_sync's (merged LoRA weights into a tensor-parallel engine, MoE experts).
    cfg.rollout.engine_process = "inline"
    group = RolloutGroup(cfg, tiny_model_dir, max_model_len=128)
    yield group
    group.shutdown()


def test_two_engines_return_n_samples_per_prompt_reproducibly_however_prompts_are_sharded(rollout):
    seeds = list(range(100, 106))
    first = rollout.generate(CHAT, seeds, 3, 1.0, 1.0, 12)
    assert len(first) == 6 and all(len(samples) == 3 for samples in first)
    assert all(len({s.text for s in samples}) > 1 for samples in first)  # a random model: the n samples differ
    assert rollout.generate(CHAT, seeds, 3, 1.0, 1.0, 12) == first
    # prompts 0-2 go to engine 0 and 3-5 to engine 1; swapped, each prompt's samples stay the same
    swapped = rollout.generate(CHAT[3:] + CHAT[:3], seeds[3:] + seeds[:3], 3, 1.0, 1.0, 12)
    assert swapped[:3] == first[3:] and swapped[3:] == first[:3]
    assert rollout.generate(CHAT, [s + 1 for s in seeds], 3, 1.0, 1.0, 12) != first


def test_draws_asked_together_are_those_asked_apart_and_one_that_does_not_fit_is_empty(rollout):
    """A held-out evaluation's sampled answers (with log-probs) and greedy ones, drawn in one call per engine, are
    the ones each draw gives alone; a draw whose max_tokens leaves a prompt no room gets empty answers, the others
    theirs."""
    from dpo_ray.workers.rollout import Draw, Sample

    seeds = list(range(200, 206))
    draws = [Draw(2, 1.0, 1.0, 12, with_logp=True), Draw(1, 0.0, 1.0, 12), Draw(1, 0.0, 1.0, 128)]
    sampled, greedy, too_long = rollout.draw(CHAT, seeds, draws)
    alone = rollout.generate(CHAT, seeds, 2, 1.0, 1.0, 12, with_logp=True)
    assert [[(s.text, s.token_ids) for s in outs] for outs in sampled] == [
        [(s.text, s.token_ids) for s in outs] for outs in alone
    ]
    assert all(
        a.logp == pytest.approx(b.logp, abs=1e-4) for x, y in zip(sampled, alone) for a, b in zip(x, y, strict=True)
    )
    assert greedy == rollout.generate(CHAT, seeds, 1, 0.0, 1.0, 12)
    assert too_long == [[Sample("", ())]] * len(CHAT)  # 128 positions: no room for 128 tokens after a prompt


def test_a_self_judging_policy_asks_its_rollout_engines_and_a_judge_prompt_too_long_gets_no_verdict(rollout):
    """reward.judge_model=policy: the tournament's answers are the rollout engines' greedy answers to the judge
    messages, both orders (checked against the engines asked directly); the built-in template does not fit the 128
    positions with a prompt and two answers on this character-level model, so each comparison is counted with no
    verdict, where vLLM would have refused the whole call."""
    from dpo_ray.data.prompts import prompt_text
    from dpo_ray.data.tournament import judge_request, round_robin, tally
    from dpo_ray.groups.judge_group import VERDICT_TOKENS, SelfJudge

    cfg = RunConfig()
    cfg.reward.judge_template = "{prompt} A: {response_a} B: {response_b} Better:"
    responses = [["one", "two"], ["three", "four"]]
    tallies = SelfJudge(cfg, rollout).tournament(CHAT[:2], responses)
    orders = [round_robin(outs) for outs in responses]
    asked = [
        [{"role": "user", "content": judge_request(cfg.reward.judge_template, prompt_text(p), outs[i], outs[j])}]
        for p, outs, pairs in zip(CHAT[:2], responses, orders)
        for i, j in pairs
    ]
    answers = [samples[0].text for samples in rollout.generate(asked, [0] * 4, 1, 0.0, 1.0, VERDICT_TOKENS)]
    assert tallies == [tally(responses[k], orders[k], answers[2 * k : 2 * k + 2]) for k in range(2)]
    cfg.reward.judge_template = ""
    long = SelfJudge(cfg, rollout).tournament(CHAT[:2], responses)
    assert [(t.unparseable, t.comparisons) for t in long] == [(1, 1), (1, 1)]


def test_a_samples_log_prob_is_the_sum_of_its_tokens_log_probs_scored_afresh(rollout, tiny_model_dir):
    from dpo_ray.data.tokenize import encode_prompt
    from dpo_ray.workers.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    samples = rollout.generate(CHAT[:2], [7, 8], 2, 1.0, 1.0, 12, with_logp=True)
    assert [[s.text for s in outs] for outs in rollout.generate(CHAT[:2], [7, 8], 2, 1.0, 1.0, 12)] == [
        [s.text for s in outs] for outs in samples
    ]  # asking for log-probs does not change what is drawn
    for chat, outs in zip(CHAT[:2], samples):
        prompt_ids = encode_prompt(tokenizer, chat, True)
        for sample in outs:
            assert sample.token_ids and sample.text
            scored = prompt_logprobs(rollout, [prompt_ids + list(sample.token_ids)])[0]
            assert sample.logp == pytest.approx(sum(scored[len(prompt_ids) - 1 :]), abs=1e-3)


def prompt_logprobs(rollout, sequences):
    """log p(token_j | tokens before j), j >= 1, of each sequence under each engine's current weights (run inside the
    engines' actors); every engine must give the same, so a weight sync that missed one shows."""
    import ray

    def score(actor, token_ids):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        outputs = actor.worker.llm.generate(
            [TokensPrompt(prompt_token_ids=list(ids)) for ids in token_ids],
            SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0),
            use_tqdm=False,
            lora_request=actor.worker.adapter,
        )
        return [
            [step[token].logprob for step, token in zip(out.prompt_logprobs[1:], ids[1:])]
            for out, ids in zip(outputs, token_ids)
        ]

    per_engine = ray.get([actor.__ray_call__.remote(score, sequences) for actor in rollout.group.actors])
    first = per_engine[0]
    for other in per_engine[1:]:
        assert all(torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-6) for a, b in zip(first, other))
    return first


def hf_token_logprobs(model, sequences):
    with torch.no_grad():
        out = []
        for ids in sequences:
            logits = model(torch.tensor([ids])).logits[0, :-1].float()
            out.append(torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0])
        return out


def max_gap(a, b) -> float:
    return max((torch.as_tensor(x) - torch.as_tensor(y)).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("stage", ["1", "2", "3"])
def test_after_a_streamed_sync_engine_logprobs_equal_the_trained_policy(
    rollout, run_config, tiny_model_dir, tmp_path, stage
):
    """Stages 1-2 send the weights each rank holds after the optimizer's partitions are gathered back; stage 3 gathers
    each bucket from the ranks' shards (stage 0, online's default, is every online campaign test's)."""
    cfg = run_config
    cfg.cluster.policy_ranks, cfg.train.lr = 2, 1.0
    cfg.deepspeed.zero_stage = stage
    pairs = make_pairs(8, seed=21)
    sequences = [list(p.prompt_ids + p.chosen_ids) for p in pairs[:4]] + [
        list(p.prompt_ids + p.rejected_ids) for p in pairs[:4]
    ]
    start = hf_token_logprobs(AutoModelForCausalLM.from_pretrained(tiny_model_dir), sequences)

    policy = PolicyGroup(cfg, tiny_model_dir, total_steps=1, accumulation=2, env=rank_env(device_spec(0), threads=1))
    try:
        sync = WeightSync(cfg, policy, rollout)
        specs, adapter_config = policy.weight_manifest()
        largest = max(math.prod(shape) * 4 for _, _, shape in specs)
        sync.bucket_bytes = largest // 3 + 1  # smaller than the largest tensor: it spans buckets
        sync()  # the starting weights: the module's engines hold the previous stage's trained ones
        before = prompt_logprobs(rollout, sequences)
        reference = ([-30.0] * 8, [-30.0] * 8)
        _, plan = build_micro_batches(pairs, range(8), 2, 2, reference, per_rank=2)
        policy.train_step(plan, step_scale(pairs))
        sent = sync()
        policy.save_pretrained(str(tmp_path / "trained"))
    finally:
        policy.shutdown()
    assert max_gap(before, start) <= 1e-4
    assert adapter_config is None and "lm_head.weight" in {name for name, _, _ in specs}
    assert sent == sum(math.prod(shape) * 4 for _, _, shape in specs)
    after = prompt_logprobs(rollout, sequences)
    trained = hf_token_logprobs(AutoModelForCausalLM.from_pretrained(tmp_path / "trained"), sequences)
    assert max_gap(after, trained) <= 1e-4
    assert max_gap(after, start) > 1e-2


def test_reward_group_scores_by_rule_and_shapes_scores_like_the_samples(local_ray):
    cfg = RunConfig()
    cfg.cluster.reward_ranks, cfg.cluster.reward_cpus = 2, 0.5
    group = RewardGroup(cfg, reward_source(cfg))  # the embedded task's rule
    try:
        scores = group.score(CHAT[:3], [["zero", "zer0"], ["one"], ["too", "two", "two "]])
    finally:
        group.shutdown()
    assert scores == [[1.0, 0.0], [1.0], [0.0, 1.0, 1.0]]


def test_a_reward_function_beside_the_user_imports_in_the_driver_and_the_reward_actors(
    local_ray, tmp_path, monkeypatch
):
    """reward.fn=MODULE:score for MODULE.py in the directory `dpo-ray online` is launched from (issue 40)."""
    import sys

    from dpo_ray.cli import launch_dir_importable
    from dpo_ray.workers.reward import import_function

    (tmp_path / "rewards_beside_me.py").write_text("def score(prompt, response):\n    return float(len(response))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    launch_dir_importable()
    assert import_function("rewards_beside_me:score")("p", "abc") == 3.0
    cfg = RunConfig()
    cfg.reward.fn, cfg.cluster.reward_cpus = "rewards_beside_me:score", 0.5
    group = RewardGroup(cfg, reward_source(cfg))
    try:
        assert group.score(CHAT[:2], [["a", "abcd"], ["xy"]]) == [[1.0, 4.0], [2.0]]
    finally:
        group.shutdown()


def test_reward_group_serves_a_reward_model(local_ray, reward_model_dir):
    from dpo_ray.workers.reward import ModelRewardWorker

    cfg = RunConfig()
    cfg.reward.model_path, cfg.cluster.reward_ranks, cfg.cluster.reward_cpus = reward_model_dir, 2, 0.5
    group = RewardGroup(cfg, reward_source(cfg))
    try:
        scores = group.score(CHAT[:2], [["zero", "one", "two"], ["three"]])
    finally:
        group.shutdown()
    local = ModelRewardWorker(reward_model_dir, micro_batch_size=8, max_length=64)
    expected = local.score([(CHAT[0], r) for r in ["zero", "one", "two"]] + [(CHAT[1], "three")])
    assert [len(s) for s in scores] == [3, 1]
    assert sum(scores, []) == pytest.approx(expected, abs=1e-5)
