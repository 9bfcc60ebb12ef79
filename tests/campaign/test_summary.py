"""The per-round table an online run prints: its columns, blank cells, and what the training items are called."""

from __future__ import annotations

from dpo_ray.campaign.summary import format_rounds


def test_the_rounds_table_counts_pairs_or_online_ktos_examples():
    start = {"round": 0, "eval/sampled_reward": 0.5, "eval/greedy_reward": 0.5}
    paired = format_rounds([start, {"round": 1, "reward/mean": 0.52, "pairs": 527, "time/round": 7.44}])
    head, rule, first, second = paired.splitlines()
    assert [c.strip() for c in head.strip("|").split("|")] == [
        "round", "mean reward", "pairs", "held-out sampled", "held-out greedy", "seconds",
    ]  # fmt: skip
    assert [c.strip() for c in first.strip("|").split("|")] == ["0", "", "", "0.500", "0.500", ""]
    assert [c.strip() for c in second.strip("|").split("|")] == ["1", "0.520", "527", "", "", "7.4"]
    kto = format_rounds([start, {"round": 1, "pairs": 3200, "examples/desirable_share": 0.52}])
    assert "examples" in kto.splitlines()[0] and "pairs" not in kto.splitlines()[0]
