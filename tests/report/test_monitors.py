"""Each failure-mode monitor trips on a constructed run that has the failure and stays quiet on a healthy one."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpo_ray.report.monitors import as_metrics, offline_checks, round_checks, stalled_while_growing, warnings
from dpo_ray.report.records import RunRecords
from dpo_ray.schema import MonitorConfig

M = MonitorConfig()


def healthy_rounds(n: int = 5):
    rows = [{"round": 0, "eval/sampled_reward": 0.1, "eval/length": 30.0, "eval/kl": 0.0}]
    for r in range(1, n + 1):
        rows.append(
            {
                "round": r,
                "eval/sampled_reward": 0.1 + 0.1 * r,
                "eval/length": 30.0 + r,
                "eval/kl": 1.5 * r,
                "train/rewards/margins": 0.2 * r,
                "pairs/chosen_longer_share": 0.5,
                "pairs/tied_prompt_share": 0.1,
                "pairs/near_identical_share": 0.02,
                "pairs/reference_disagrees": 0.5,
            }
        )
    return rows


def tripped(checks):
    return {c.key for c in checks if c.tripped}


def test_a_healthy_campaign_trips_nothing():
    checks = round_checks(healthy_rounds(), M)
    assert tripped(checks) == set() and warnings(checks) == []
    assert as_metrics(checks)["monitor/alerts"] == 0.0
    assert as_metrics(checks)["monitor/length_growth"] == pytest.approx(35.0 / 30.0)


@pytest.mark.parametrize(
    "failure, key",
    [
        ({"eval/length": 60.0}, "length_growth"),  # responses doubled in length
        ({"pairs/chosen_longer_share": 0.9}, "chosen_longer_share"),
        ({"eval/kl": 45.0}, "kl"),
        ({"pairs/tied_prompt_share": 0.9}, "tied_prompt_share"),
        ({"pairs/near_identical_share": 0.5}, "near_identical_share"),
    ],
)
def test_each_round_monitor_trips_on_its_failure_alone(failure, key):
    rows = healthy_rounds()
    rows[-1].update(failure)
    checks = round_checks(rows, M)
    assert tripped(checks) == {key}
    assert as_metrics(checks)["monitor/alerts"] == 1.0 and len(warnings(checks)) == 1


def test_the_kl_monitor_reads_the_kl_the_user_names():
    """monitor.kl_to=round_reference (online.reference_update=each_round): the KL to the round's own reference,
    small while the KL to the start grows past kl_max, trips only when it passes kl_max itself."""
    rows = healthy_rounds()
    rows[-1].update({"eval/kl": 45.0, "eval/kl_to_round_reference": 3.0})
    to_round = MonitorConfig(kl_max=20.0, kl_to="round_reference")
    assert tripped(round_checks(rows, M)) == {"kl"} and tripped(round_checks(rows, to_round)) == set()
    rows[-1]["eval/kl_to_round_reference"] = 25.0
    (check,) = [c for c in round_checks(rows, to_round) if c.key == "kl"]
    assert check.tripped and check.value == 25.0 and check.monitor.endswith("KL to the round's reference")


def test_over_optimisation_trips_when_the_margin_keeps_growing_but_held_out_reward_stalls():
    rows = healthy_rounds()
    for row in rows[2:]:
        row["eval/sampled_reward"] = 0.3  # flat from round 2 while the margin still rises every round
    assert tripped(round_checks(rows, M)) == {"over_optimisation"}
    assert stalled_while_growing([1, 2, 3, 4], [0.5, 0.5, 0.501, 0.5], 3, 0.005)
    assert not stalled_while_growing([1, 2, 3, 4], [0.5, 0.5, 0.52, 0.5], 3, 0.005)  # it improved
    assert not stalled_while_growing([1, 3, 2, 4], [0.5] * 4, 3, 0.005)  # the margin did not keep growing


def offline_records(**stats) -> RunRecords:
    records = RunRecords(Path("run"))
    records.data_stats = {
        "train": {"pairs/chosen_longer_share": 0.5, "pairs/near_identical_share": 0.0},
        "eval": {"pairs/reference_disagrees": 0.3},
    }
    for split, key, value in stats.get("set", []):
        records.data_stats[split][key] = value
    records.evals = [
        {"step": 10 * i, "eval_rewards/margins": 0.1 * i, "eval_rewards/accuracies": 0.5 + 0.1 * i} for i in range(5)
    ]
    return records


@pytest.mark.parametrize(
    "change, key",
    [
        (("train", "pairs/chosen_longer_share", 0.95), "chosen_longer_share"),
        (("train", "pairs/near_identical_share", 0.4), "near_identical_share"),
        (("eval", "pairs/reference_disagrees", 0.9), "label_noise"),  # e.g. chosen and rejected swapped
    ],
)
def test_offline_monitors_trip_on_their_failure_and_stay_quiet_otherwise(change, key):
    assert tripped(offline_checks(offline_records(), M)) == set()
    assert tripped(offline_checks(offline_records(set=[change]), M)) == {key}


def test_offline_over_optimisation_reads_the_held_out_evaluations():
    records = offline_records()
    for row in records.evals[1:]:
        row["eval_rewards/accuracies"] = 0.6
    assert tripped(offline_checks(records, M)) == {"over_optimisation"}
