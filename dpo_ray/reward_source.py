"""Which reward an online run uses, decided once from the config: a rule (reward.fn), a reward model
(reward.model_path), the built-in task's own rule, or a pairwise judge (reward.judge_model, reward.judge_fn) in its
place. The preflight checks, the groups' resources, the plan, the groups themselves and the run's fingerprint all read
this one decision. Plain data: building a built-in model (resolved) is the only step that loads anything."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from enum import Enum

from .schema import RunConfig


class RewardKind(str, Enum):
    rule = "rule"  # reward.fn: a function by import path
    model = "model"  # reward.model_path: a sequence-classification reward model
    task = "task"  # no reward option: the built-in model's or prompt task's own rule
    judge_model = "judge_model"  # reward.judge_model: an LLM judge, served by vLLM
    judge_fn = "judge_fn"  # reward.judge_fn: a judge function by import path
    self_judge = "self_judge"  # reward.judge_model=policy: the rollout engines judge their own samples (self-rewarding)


# The reward options (of RewardConfig) and the kind each names, in precedence order: a judge replaces the reward, and
# reward.fn wins over reward.model_path (validation allows one judge, never beside a reward).
OPTIONS = {
    "judge_model": RewardKind.judge_model,
    "judge_fn": RewardKind.judge_fn,
    "fn": RewardKind.rule,
    "model_path": RewardKind.model,
}
JUDGES = (RewardKind.judge_model, RewardKind.judge_fn, RewardKind.self_judge)
SELF = "policy"  # reward.judge_model's name for the policy itself


@dataclass(frozen=True)
class RewardSource:
    kind: RewardKind
    target: str  # an import path, or a model's name or directory as given (its directory once resolved)
    option: str  # the option that names it, for messages ('' when neither the config nor its task names a reward)
    task_rule: str = ""  # the built-in task's own rule by import path, whatever scores the samples

    @property
    def judged(self) -> bool:
        """A pairwise judge plays the samples against each other instead of a reward scoring each."""
        return self.kind in JUDGES

    @property
    def rule(self) -> str:
        """The rule that scores (judged: evaluates) the samples unless a reward model does: reward.fn when given, else
        the task's own ('' for none)."""
        return self.target if self.kind is RewardKind.rule else self.task_rule

    @property
    def reward_model(self) -> str:
        """The reward model that scores the samples ('' when a rule or a judge does)."""
        return self.target if self.kind is RewardKind.model else ""

    @property
    def judge_model(self) -> str:
        """The judge model served by vLLM ('' for a judge function, or no judge)."""
        return self.target if self.kind is RewardKind.judge_model else ""

    @property
    def judge_fn(self) -> str:
        return self.target if self.kind is RewardKind.judge_fn else ""

    @property
    def judge_group_needed(self) -> bool:
        """A judge group of its own serves the judge (a self-judging policy's are the rollout engines)."""
        return self.kind in (RewardKind.judge_model, RewardKind.judge_fn)

    @property
    def reward_group_needed(self) -> bool:
        """A reward group scores the samples, or (judged) evaluates held-out answers with the task's rule if any."""
        return not self.judged or bool(self.task_rule)

    @property
    def reward_on_gpu(self) -> bool:
        """A reward rank takes cluster.gpus_per_rank GPUs for a reward model; a rule runs on CPU."""
        return self.kind is RewardKind.model

    @property
    def judge_on_gpu(self) -> bool:
        """A judge rank takes reward.judge_tensor_parallel_size GPUs for its vLLM engine; a judge function, none."""
        return self.kind is RewardKind.judge_model

    def fingerprint(self, judge_template: str) -> dict[str, dict[str, str]]:
        """The run fingerprint's parts for what scores the samples; 'judge' only when judged (runs from before judges
        keep their print)."""
        parts = {"reward": {"fn": self.rule, "model": self.reward_model}}
        if self.judged:
            model = SELF if self.kind is RewardKind.self_judge else self.judge_model
            parts["judge"] = {"model": model, "fn": self.judge_fn, "template": judge_template}
        return parts

    def resolved(self, cfg: RunConfig) -> RewardSource:
        """A built-in reward or judge model name built (once, into the cache) and given as its directory; any other
        target as it is."""
        from .tasks.registry import resolve_judge_model, resolve_reward_model

        resolve = {RewardKind.model: resolve_reward_model, RewardKind.judge_model: resolve_judge_model}.get(self.kind)
        return replace(self, target=resolve(cfg)) if resolve else self


def reward_source(cfg: RunConfig) -> RewardSource:
    """The reward of cfg's online run, unresolved: the first reward option set in precedence order, else the task's
    rule (a prompt task's before the built-in model's)."""
    from .tasks.registry import MODELS, PROMPT_TASKS

    tasks = {"online.prompt_task": PROMPT_TASKS.get(cfg.online.prompt_task), "model.path": MODELS.get(cfg.model.path)}
    task_option, task_rule = next(((o, b.reward) for o, b in tasks.items() if b and b.reward), ("", ""))
    if cfg.reward.judge_model == SELF:
        return RewardSource(RewardKind.self_judge, SELF, "reward.judge_model", task_rule)
    for name, kind in OPTIONS.items():
        if getattr(cfg.reward, name):
            return RewardSource(kind, getattr(cfg.reward, name), f"reward.{name}", task_rule)
    return RewardSource(RewardKind.task, task_rule, task_option, task_rule)


def eval_judge_config(cfg: RunConfig) -> RunConfig | None:
    """cfg with its reward section naming the held-out judge (eval.judge_model or eval.judge_fn) in place of what
    trains the policy, so that a judge group, its resources and the plan take it as they take a training judge; None
    without one."""
    if not (cfg.eval.judge_model or cfg.eval.judge_fn):
        return None
    judged = copy.deepcopy(cfg)
    judged.reward.judge_model, judged.reward.judge_fn = cfg.eval.judge_model, cfg.eval.judge_fn
    judged.reward.fn, judged.reward.model_path = "", ""
    return judged


def eval_judge_group_needed(cfg: RunConfig) -> bool:
    """A held-out judge that is not the training judge gets a group of its own (the same one serves both)."""
    e, r = cfg.eval, cfg.reward
    return bool(e.judge_model or e.judge_fn) and (e.judge_model, e.judge_fn) != (r.judge_model, r.judge_fn)
