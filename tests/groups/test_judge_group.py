"""A judge model in a vLLM engine of its own (the campaign's judged rounds, with a judge function standing in for it:
tests/campaign/test_online.py)."""

from __future__ import annotations

import pytest

from dpo_ray.compose import compose
from dpo_ray.data.tournament import judge_statistics, round_robin
from dpo_ray.groups.judge_group import JudgeGroup
from dpo_ray.reward_source import reward_source
from dpo_ray.sizing.judge_length import judge_max_model_len
from dpo_ray.sizing.model_shape import model_shape
from dpo_ray.tasks import number_words

pytestmark = pytest.mark.slow


def test_a_small_instruct_model_judges_each_comparison_in_both_orders_and_counts_how_each_ended(
    local_ray, tmp_path, task_cache_dir
):
    """SmolLM2-135M-Instruct as reward.judge_model: each prompt's distinct answers are played round robin, each
    comparison asked in both orders, and every comparison ends once as agreed, tied, disagreed or unparseable; an
    agreed one is a win of the answer both orders named."""
    cfg = compose(
        [f"output_dir={tmp_path / 'run'}", f"cache_dir={task_cache_dir}", "reward.judge_model=smollm2-135m"], "online"
    )
    source = reward_source(cfg).resolved(cfg)
    length = judge_max_model_len(64, model_shape(source.judge_model).max_positions)  # as a campaign sizes it
    numbers = (7, 42, 315, 868)
    prompts = [number_words.prompt(n) for n in numbers]
    words = number_words.to_words  # the right answer, another number and a repetition: 3 comparisons a prompt
    answers = [[words(n), words(n + 1), f"{words(n)} {words(n)}"] for n in numbers]
    judge = JudgeGroup(cfg, source, length)
    try:
        tallies = judge.tournament(prompts, answers)
    finally:
        judge.shutdown()
    assert len(tallies) == len(prompts)
    for tally, outs in zip(tallies, answers):
        assert tally.comparisons == 3 == len(round_robin(outs)) // 2
        assert sum(tally.wins) == tally.agreed == len(tally.beats)  # one win per agreed comparison, none otherwise
        assert tally.named <= 2 * tally.comparisons and tally.first_shown <= tally.named
    statistics = judge_statistics(tallies)
    comparisons = sum(t.comparisons for t in tallies)
    ends = [statistics[f"judge/{k}"] for k in ("agreed", "ties", "disagreed", "unparseable")]
    assert statistics["judge/comparisons"] == sum(ends) == comparisons > 0
    assert statistics["judge/calls"] == 2 * comparisons
    print("SmolLM2 judge:", statistics)
