"""The judge group: a pairwise judge (vLLM engines of a judge model, or workers running a judge function) plays each
prompt's samples against each other in both orders; see data.tournament for the scheme and what is kept."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from ..data.formats import Text
from ..data.prompts import prompt_text
from ..data.tournament import DEFAULT_TEMPLATE, Tally, judge_request, round_robin, tally
from ..reward_source import RewardSource
from ..schema import RolloutConfig, RunConfig
from ..sizing.resources import judge_need
from ..workers.device import device_spec, rank_env
from ..workers.engine_args import engine_env
from .actor_group import ActorGroup
from .rollout_group import RolloutGroup

VERDICT_TOKENS = 8  # "A", "B" or "tie", and room for a label or markup before it


def judge_engine(cfg: RunConfig) -> RolloutConfig:
    """A judge engine's settings: the rollout engines', over reward.judge_tensor_parallel_size GPUs, with the judge's
    own length (one engine a rank; no weights are ever synced into it)."""
    return replace(cfg.rollout, tensor_parallel_size=cfg.reward.judge_tensor_parallel_size, max_model_len=0)


class JudgeGroup:
    def __init__(self, cfg: RunConfig, source: RewardSource, max_model_len: int = 0, placement=None):
        """source: the run's judge, resolved (a judge model's directory, or a judge function); max_model_len: the
        longest judge prompt + verdict in tokens (0: the model's own limit)."""
        r, need = cfg.reward, judge_need(cfg)
        self.template = r.judge_template or DEFAULT_TEMPLATE
        self.uses_model = bool(source.judge_model)
        if self.uses_model:
            rollout = judge_engine(cfg)
            worker = "dpo_ray.workers.rollout.RolloutWorker"
            kwargs = dict(
                model_path=source.judge_model,
                cfg=rollout,
                policy_dtype=cfg.model.dtype,
                gpus=need.gpus,
                seed=cfg.online.seed,
                max_model_len=max_model_len,
            )
            env = engine_env(rollout, need.gpus)
        else:
            worker, kwargs = "dpo_ray.workers.judge.JudgeFnWorker", dict(fn=source.judge_fn, timeout_s=r.timeout_s)
            env = rank_env(device_spec(0.0), 1)
        self.group = ActorGroup(need, worker, cfg.cluster, env, kwargs, placement=placement)

    def tournament(self, prompts: Sequence[Text], responses: Sequence[Sequence[str]]) -> list[Tally]:
        """Each prompt's round robin, judged: one Tally per prompt (wins per sample, agreed beats, counts)."""
        return play(prompts, responses, self._answers)

    def _answers(self, requests: list[tuple[str, str, str]]) -> list[str]:
        if not self.uses_model:
            return self.group.run_shards("judge", requests)
        jobs = [(messages, 0) for messages in judge_messages(self.template, requests)]
        drawn = self.group.run_shards("generate", jobs, 1, 0.0, 1.0, VERDICT_TOKENS)  # greedy: one verdict each
        return [samples[0].text for samples in drawn]

    def shutdown(self) -> None:
        self.group.shutdown()


class SelfJudge:
    """reward.judge_model=policy (Self-Rewarding Language Models, Yuan et al. 2024): the rollout engines, holding the
    policy that drew the round, judge its samples with the same pairwise prompt in both orders (no engine of their
    own)."""

    def __init__(self, cfg: RunConfig, rollout: RolloutGroup):
        self.template, self.rollout = cfg.reward.judge_template or DEFAULT_TEMPLATE, rollout

    def tournament(self, prompts: Sequence[Text], responses: Sequence[Sequence[str]]) -> list[Tally]:
        return play(prompts, responses, self._answers)

    def _answers(self, requests: list[tuple[str, str, str]]) -> list[str]:
        messages = judge_messages(self.template, requests)
        drawn = self.rollout.generate(messages, [0] * len(messages), 1, 0.0, 1.0, VERDICT_TOKENS)
        return [samples[0].text for samples in drawn]


def judge_messages(template: str, requests: list[tuple[str, str, str]]) -> list[list[dict]]:
    """Each (prompt, A, B) request as the chat message a judge model is asked in."""
    return [[{"role": "user", "content": judge_request(template, *request)}] for request in requests]


def play(
    prompts: Sequence[Text], responses: Sequence[Sequence[str]], answer: Callable[[list], list[str]]
) -> list[Tally]:
    """Each prompt's round robin, every (prompt, A, B) request answered by answer at once: one Tally per prompt."""
    orders = [round_robin(outs) for outs in responses]
    requests = [
        (prompt_text(p), outs[i], outs[j])
        for p, outs, pairs in zip(prompts, responses, orders, strict=True)
        for i, j in pairs
    ]
    answers = answer(requests) if requests else []
    tallies, start = [], 0
    for outs, pairs in zip(responses, orders):
        tallies.append(tally(outs, pairs, answers[start : start + len(pairs)]))
        start += len(pairs)
    return tallies
