"""Which reward an online run uses is decided once from the config; its kind, what the groups run, their GPUs and the
run's fingerprint all follow from that one decision."""

from __future__ import annotations

import pytest

from dpo_ray.api import config
from dpo_ray.reward_source import RewardKind, reward_source
from dpo_ray.schema import RunConfig
from dpo_ray.sizing.resources import group_needs, judge_need, reward_need

EMBEDDED_RULE = "dpo_ray.tasks.number_words:reward"
VADER = "dpo_ray.tasks.imdb:vader_reward"
OWN = ("model.path=/models/policy", "online.prompt_files=[p.jsonl]")  # no built-in task: no rule of its own


@pytest.mark.parametrize(
    "overrides, kind, target, option, task_rule",
    [
        ((), RewardKind.task, EMBEDDED_RULE, "model.path", EMBEDDED_RULE),
        (("reward.fn=mine:score",), RewardKind.rule, "mine:score", "reward.fn", EMBEDDED_RULE),
        (("reward.model_path=/models/rm",), RewardKind.model, "/models/rm", "reward.model_path", EMBEDDED_RULE),
        (("reward.judge_model=/models/j",), RewardKind.judge_model, "/models/j", "reward.judge_model", EMBEDDED_RULE),
        (("reward.judge_fn=mine:judge",), RewardKind.judge_fn, "mine:judge", "reward.judge_fn", EMBEDDED_RULE),
        (("reward.judge_model=policy",), RewardKind.self_judge, "policy", "reward.judge_model", EMBEDDED_RULE),
        (("online.prompt_task=imdb", "model.path=/models/policy"), RewardKind.task, VADER, "online.prompt_task", VADER),
        (("online.prompt_task=imdb",), RewardKind.task, VADER, "online.prompt_task", VADER),  # before the model's
        ((*OWN, "reward.fn=mine:score"), RewardKind.rule, "mine:score", "reward.fn", ""),
        (OWN, RewardKind.task, "", "", ""),  # no reward at all: preflight refuses the run
    ],
)
def test_each_kind_is_decided_from_the_config(overrides, kind, target, option, task_rule):
    source = reward_source(config(*overrides, command="online"))
    assert (source.kind, source.target, source.option, source.task_rule) == (kind, target, option, task_rule)


def test_reward_fn_wins_over_reward_model_path_which_then_is_neither_started_nor_fingerprinted():
    cfg = RunConfig()
    cfg.reward.fn, cfg.reward.model_path = "mine:score", "/models/rm"
    source = reward_source(cfg)
    assert (source.kind, source.rule, source.reward_model) == (RewardKind.rule, "mine:score", "")
    assert source.fingerprint("")["reward"] == {"fn": "mine:score", "model": ""}


def test_a_judged_run_starts_a_reward_group_only_to_evaluate_with_its_tasks_rule():
    with_task = reward_source(config("reward.judge_model=/models/j", command="online"))
    without = reward_source(config(*OWN, "reward.judge_model=/models/j", command="online"))
    assert with_task.judged and with_task.reward_group_needed and with_task.rule == EMBEDDED_RULE
    assert without.judged and not without.reward_group_needed
    scored = reward_source(config("reward.model_path=/models/rm", command="online"))
    assert not scored.judged and scored.reward_group_needed and scored.reward_model == "/models/rm"


@pytest.mark.parametrize(
    "overrides, reward_gpus, judge_gpus",
    [
        ((), 0.0, None),  # the task's rule runs on CPU
        (("reward.fn=mine:score",), 0.0, None),
        (("reward.model_path=/models/rm",), 2.0, None),  # cluster.gpus_per_rank
        (("reward.judge_model=/models/j", "reward.judge_tensor_parallel_size=4"), 0.0, 4.0),
        (("reward.judge_fn=mine:judge",), 0.0, 0.0),
        ((*OWN, "reward.judge_model=/models/j"), None, 1.0),  # no task rule: no reward group
        (("reward.judge_model=policy",), 0.0, None),  # self-rewarding: the rollout engines judge, no judge group
    ],
)
def test_each_kind_asks_the_gpus_it_runs_on(overrides, reward_gpus, judge_gpus):
    cfg = config("cluster.gpus_per_rank=2", *overrides, command="online")
    needs = {n.name: n.gpus for n in group_needs(cfg, reference=True, online=True)}
    assert (needs.get("reward"), needs.get("judge")) == (reward_gpus, judge_gpus)
    cfg.cluster.gpus_per_rank = 0  # on CPU nothing takes a GPU
    assert reward_need(cfg).gpus == judge_need(cfg).gpus == 0.0


def test_the_fingerprint_parts_of_the_embedded_default_are_those_runs_have_recorded():
    assert reward_source(config(command="online")).fingerprint("") == {
        "reward": {"fn": "dpo_ray.tasks.number_words:reward", "model": ""}
    }
    judged = reward_source(config("reward.judge_fn=dpo_ray.tasks.number_words:judge", command="online"))
    assert judged.fingerprint("{prompt} {response_a} {response_b}?") == {
        "reward": {"fn": "dpo_ray.tasks.number_words:reward", "model": ""},
        "judge": {
            "model": "",
            "fn": "dpo_ray.tasks.number_words:judge",
            "template": "{prompt} {response_a} {response_b}?",
        },
    }


def test_a_changed_reward_fn_on_the_embedded_task_changes_the_fingerprint():
    default = reward_source(config(command="online")).fingerprint("")
    own = reward_source(config("reward.fn=mine:score", command="online")).fingerprint("")
    assert own != default and own["reward"] == {"fn": "mine:score", "model": ""}


def test_resolving_leaves_a_directory_and_a_rule_as_given():
    for overrides in (("reward.model_path=/models/rm",), ("reward.judge_fn=mine:judge",), ()):
        cfg = config(*overrides, command="online")
        assert reward_source(cfg).resolved(cfg) == reward_source(cfg)


def test_a_held_out_judge_gets_a_group_of_its_own_unless_it_is_the_training_judge():
    """eval.judge_fn beside a reward: an eval_judge group placed as a judge (a CPU worker for a function); the same
    judge as the training one: that group serves both; the policy judging its own yardstick: refused."""
    from dpo_ray.compose import ConfigError, compose

    names = lambda *overrides: [n.name for n in group_needs(config(*overrides, command="online"), True, True)]
    assert names("eval.judge_fn=mine:judge") == ["rollout", "reward", "eval_judge", "reference", "policy"]
    assert names("reward.judge_fn=mine:judge", "eval.judge_fn=mine:judge") == [
        "rollout",
        "reward",
        "judge",
        "reference",
        "policy",
    ]
    assert reward_source(config("reward.judge_model=policy", command="online")).fingerprint("")["judge"]["model"] == (
        "policy"
    )
    with pytest.raises(ConfigError, match="eval.judge_model=policy: the yardstick would be the model it measures"):
        compose(["eval.judge_model=policy"], "online")
