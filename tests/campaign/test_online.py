"""Online campaigns on a real local Ray with a real vLLM engine: rounds on the embedded task, and resume."""

from __future__ import annotations

import itertools
import json
import sys

import datasets
import pytest

from dpo_ray.campaign.online import OnlineCampaign
from dpo_ray.compose import compose

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache_dir(task_cache_dir):
    return task_cache_dir


# One reference replica: a campaign's reference log-probs are the same over any number (each micro-batch is scored
# whole), and each actor process costs ~5 s of imports on this 2-core box; a campaign's ranks wait for the next's.
SMALL = ("cluster.reward_cpus=0.5", "cluster.reference_ranks=1", "cluster.reuse_rank_processes=true")


def run_online(run_dir, cache_dir, rounds, *overrides):
    cfg = compose(
        [
            f"output_dir={run_dir}",
            f"cache_dir={cache_dir}",
            "progress=false",
            f"online.rounds={rounds}",
            *SMALL,
            *overrides,
        ],
        "online",
    )
    return OnlineCampaign(cfg).run()


@pytest.fixture(scope="module")
def two_rounds(local_ray, tmp_path_factory, cache_dir):
    return run_online(tmp_path_factory.mktemp("online-a"), cache_dir, rounds=2)


@pytest.fixture(scope="module")
def async_two(local_ray, tmp_path_factory, cache_dir):
    """Asynchronous rounds with TR-DPO's moving reference: the two kinds of state a round checkpoint holds beyond the
    policy's (the rounds drawn ahead, the mixed reference), which the killed-engine test resumes from."""
    return run_online(tmp_path_factory.mktemp("online-async"), cache_dir, 2, *ASYNC, *TR_DPO)


ASYNC = ("online.async_rounds=true", "online.max_staleness=1")
TR_DPO = ("algo.sync_ref_model=true", "algo.ref_model_sync_steps=3")


def same(row: dict) -> dict:
    """A round row without its clock readings."""
    return {k: v for k, v in row.items() if not k.startswith("time/") and k != "timeline"}


def pairs_of(result, r):
    return datasets.load_from_disk(str(result.run_dir / "rounds" / f"round_{r:03d}" / "pairs")).to_list()


def test_two_rounds_raise_the_held_out_accuracy_and_write_each_rounds_data(two_rounds):
    rows = two_rounds.rounds
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert rows[2]["eval/sampled_reward"] >= rows[0]["eval/sampled_reward"] + 0.15
    assert rows[2]["reward/mean"] > rows[1]["reward/mean"]  # round 2 samples from the round-1 policy
    for r in (1, 2):
        samples = datasets.load_from_disk(str(two_rounds.run_dir / "rounds" / f"round_{r:03d}" / "samples"))
        assert samples.num_rows == 800 and all(len(x) == 4 for x in samples["responses"])
        pairs = pairs_of(two_rounds, r)
        assert len(pairs) == rows[r]["pairs"] > 0
        assert all(p["chosen_reward"] > p["rejected_reward"] for p in pairs)
        # on-policy: a pair holds the very tokens the engine sampled (EOS included), not its text tokenised anew
        sampled = {json.dumps(row["prompt"]): row for row in samples}
        for p in pairs:
            row = sampled[json.dumps(p["prompt"])]
            drawn = row["response_ids"][row["responses"].index(p["chosen"][0]["content"])]
            assert p["chosen_ids"] == drawn and p["rejected_ids"] in row["response_ids"]
        assert any(p["chosen_ids"][-1] == two_rounds_eos(two_rounds) for p in pairs)
        assert {
            "time/generate",
            "time/score",
            "time/pairs",
            "time/reference",
            "time/train",
            "time/wait",
            "time/sync",
            "time/eval",
        } <= set(rows[r])
        # the reference group (its own, frozen) was still scoring the round's pairs when training began
        spans = {name: (start, end) for name, start, end in rows[r]["timeline"]}
        assert spans["reference pass"][1] > spans["train"][0] > spans["reference pass"][0], rows[r]["timeline"]
    written = [json.loads(line) for line in (two_rounds.run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [row["round"] for row in written] == [0, 1, 2]
    assert (two_rounds.final_model / "model.safetensors").exists()


def two_rounds_eos(result) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(result.final_model).eos_token_id


def test_rounds_log_what_the_monitors_read_and_the_report_draws_them(two_rounds):
    from ..report.checks import check_report

    rows = two_rounds.rounds
    assert abs(rows[0]["eval/kl"]) < 0.01  # the starting policy is its own reference: vLLM and HF log-probs agree
    assert rows[2]["eval/kl"] > rows[0]["eval/kl"] + 0.01
    for row in rows[1:]:
        assert {
            "length/sampled",
            "length/chosen",
            "length/rejected",
            "pairs/tied_prompt_share",
            "pairs/chosen_longer_share",
            "pairs/near_identical_share",
            "pairs/reference_disagrees",
            "train/rewards/margins",
            "eval/length",
            "monitor/length_growth",
            "monitor/alerts",
        } <= set(row)
        assert 0 <= row["pairs/tied_prompt_share"] <= 1 and row["length/sampled"] > 0
    assert rows[1]["pairs/tied_prompt_share"] == pytest.approx(
        1 - rows[1]["pairs"] / rows[1]["prompts"]
    )  # one pair a prompt
    plots = ["rounds.png", "frontier.png", "phases.png", "timeline.png", "training.png"]
    text = check_report(two_rounds.run_dir, plots)
    assert "## Monitors" in text and "KL to reference" in text


FAILING_REWARD = """
from collections import Counter

from dpo_ray.tasks.number_words import reward

calls = Counter()


def score(prompt, response):
    calls[prompt] += 1
    if prompt == {prompt!r} and calls[prompt] > {n}:  # round 2's samples of it: round 1 scored n before them
        raise KeyError("no rule for this one")
    return reward(prompt, response)
"""


def test_a_reward_that_fails_in_round_2_stops_the_campaign_and_the_rerun_scores_the_kept_samples_as_if_uninterrupted(
    two_rounds, tmp_path_factory, cache_dir, monkeypatch
):
    """The user's reward raises on one prompt in round 2: the run stops naming the round, the prompt, the sample and
    where the drawn samples are kept; once the function is fixed the same command resumes after round 1, scores those
    samples without drawing again, and ends with the pairs and rows of the uninterrupted two_rounds. Asynchronous
    rounds with no staleness change the order of nothing, as here."""
    from dpo_ray.cli import launch_dir_importable
    from dpo_ray.data.prompts import prompt_text
    from dpo_ray.workers.user_code import UserCodeError

    run_dir, no_staleness = tmp_path_factory.mktemp("online-b"), ("online.async_rounds=true", "online.max_staleness=0")
    samples = datasets.load_from_disk(str(two_rounds.run_dir / "rounds" / "round_002" / "samples"))
    failing = prompt_text(samples[0]["prompt"])
    module = run_dir.parent / f"{run_dir.name}-code"
    module.mkdir()
    (module / "my_reward.py").write_text(FAILING_REWARD.format(prompt=failing, n=len(samples[0]["responses"])))
    monkeypatch.chdir(module)  # the reward module beside the user, as `dpo-ray online` finds it
    monkeypatch.setattr(sys, "path", list(sys.path))
    launch_dir_importable()
    args = (run_dir, cache_dir, 2, *no_staleness, "reward.fn=my_reward:score")
    with pytest.raises(UserCodeError) as caught:
        run_online(*args)
    kept = run_dir / "rounds" / "round_002" / "drawn.json"
    message = str(caught.value)
    assert message.startswith(
        f"round 2: reward.fn=my_reward:score raised KeyError: 'no rule for this one' on prompt {failing!r}, response '"
    )
    assert f"The round's samples are kept ({kept})" in message and kept.exists()
    (module / "my_reward.py").write_text("from dpo_ray.tasks.number_words import reward as score\n")
    resumed = run_online(*args)
    assert resumed.resumed_from == 1 and [row["round"] for row in resumed.rounds] == [0, 1, 2]
    assert pairs_of(resumed, 1) == pairs_of(two_rounds, 1)
    assert pairs_of(resumed, 2) == pairs_of(two_rounds, 2)
    assert same(resumed.rounds[2]) == same(two_rounds.rounds[2])
    assert [row["policy_version"] for row in resumed.rounds[1:]] == [0, 1]
    spans = lambda row: [span[0] for span in row["timeline"]]  # noqa: E731
    assert "draw" in spans(two_rounds.rounds[2]) and "draw" not in spans(resumed.rounds[2])  # not drawn again
    assert not kept.exists()  # a finished round keeps its samples with their rewards, not as drawn


def first_steps(result) -> list[dict]:
    """Each round's first training step, as metrics.jsonl logged it."""
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    steps = {row["step"]: row for row in map(json.loads, lines) if "rewards/chosen" in row and "round" not in row}
    ends = itertools.accumulate(row["steps"] for row in result.rounds[1:])
    return [steps[end - row["steps"] + 1] for end, row in zip(ends, result.rounds[1:])]


def test_each_round_trains_against_the_policy_as_the_round_began_also_after_a_resume(
    two_rounds, tmp_path_factory, cache_dir
):
    """online.reference_update=each_round (iterative DPO: M_t is the reference of iteration t+1): each round's first
    step finds the policy equal to its reference, implicit rewards exactly 0, here in a campaign resumed after round
    1; with the frozen reference round 2 begins where round 1 left them. Round 1 is the frozen run's own (the same
    reference then), and its KL to the round's reference (the policy's snapshot) is the reference group's KL. A
    held-out judge (the task's rule judge, a group of its own) plays each round's greedy answers against the starting
    policy's, kept at round 0 and read back by the resumed run."""
    from dpo_ray.data.prompts import prompt_text
    from dpo_ray.tasks.number_words import reward

    run_dir = tmp_path_factory.mktemp("online-each-round")
    each_round = ("online.reference_update=each_round", "eval.judge_fn=dpo_ray.tasks.number_words:judge")
    run_online(run_dir, cache_dir, 1, *each_round)
    baseline = (run_dir / "eval_baseline.jsonl").read_text()
    resumed = run_online(run_dir, cache_dir, 2, *each_round)
    assert resumed.resumed_from == 1
    for row in first_steps(resumed):
        assert (row["rewards/chosen"], row["rewards/rejected"], row["kl/chosen"]) == (0.0, 0.0, 0.0)
    frozen = first_steps(two_rounds)
    assert frozen[0]["rewards/chosen"] == 0.0 and abs(frozen[1]["rewards/margins"]) > 1e-3
    assert pairs_of(resumed, 1) == pairs_of(two_rounds, 1)
    rows = resumed.rounds
    print("each_round rows:", [{k: v for k, v in row.items() if k.startswith("eval/")} for row in rows])
    assert [row["reference_version"] for row in rows[1:]] == [0, 1] and "eval/kl_to_round_reference" not in rows[0]
    assert rows[1]["eval/kl_to_round_reference"] == pytest.approx(rows[1]["eval/kl"], abs=1e-4)
    assert rows[2]["eval/kl_to_round_reference"] < rows[2]["eval/kl"]
    kept = [json.loads(line) for line in baseline.splitlines()]
    assert (run_dir / "eval_baseline.jsonl").read_text() == baseline and len(kept) == 200
    right = [reward(prompt_text(row["prompt"]), row["response"]) for row in kept]
    assert sum(right) / len(right) == rows[0]["eval/greedy_reward"] and "eval/win_rate" not in rows[0]
    for row in rows[1:]:
        assert row["eval/win_rate_low"] <= row["eval/win_rate"] <= row["eval/win_rate_high"]
    assert rows[2]["eval/win_rate"] > 0.6


def test_async_rounds_draw_round_2_while_round_1_trains_and_record_the_policy_version(async_two, two_rounds):
    rows = async_two.rounds
    assert [row["policy_version"] for row in rows[1:]] == [0, 0]  # round 2 drawn from the starting policy
    assert pairs_of(async_two, 1) == pairs_of(two_rounds, 1)  # round 1: the same weights and seeds
    assert pairs_of(async_two, 2) != pairs_of(two_rounds, 2)
    assert rows[2]["eval/sampled_reward"] >= rows[0]["eval/sampled_reward"] + 0.1
    for r, version in ((1, 0), (2, 0)):
        samples = datasets.load_from_disk(str(async_two.run_dir / "rounds" / f"round_{r:03d}" / "samples"))
        assert set(samples["policy_version"]) == {version}
    span = lambda row, phase: next((s, e) for p, s, e in row["timeline"] if p == phase)
    drawn, trained = span(rows[2], "draw"), span(rows[1], "train")
    assert drawn[0] < trained[0] and drawn[1] > trained[0]  # asked for before round 1 trained; drawing as it trained
    assert (async_two.run_dir / "round_checkpoints" / "round_1" / "rounds_ahead.json").exists()
    assert not (async_two.run_dir / "round_checkpoints" / "round_2" / "rounds_ahead.json").exists()


def test_online_tr_dpo_mixes_every_k_steps_and_keeps_the_mixed_reference_in_each_round_checkpoint(async_two):
    """TR-DPO online: the reference moves every k steps (mid-round too: later steps score against the moved one) and
    the round checkpoint holds it; the killed-engine test resumes from it and ends as the uninterrupted run does."""
    for r in (1, 2):
        checkpoint = async_two.run_dir / "round_checkpoints" / f"round_{r}"
        state = json.loads((checkpoint / "run_state.json").read_text())
        assert state["reference_mixes"] == state["step"] // 3 > 0
        assert (checkpoint / "reference-rank0.safetensors").exists()


STAND_IN_JUDGE = "reward.judge_fn=dpo_ray.tasks.number_words:judge"


def stand_in_counts(samples: list[dict]) -> dict[str, int]:
    """How the stand-in judge ends each prompt's comparisons, counted from the samples with the task's rule: right vs
    wrong agreed, right vs right a tie, two wrong answers as long disagreed (position bias), else unparseable."""
    from dpo_ray.data.prompts import prompt_text
    from dpo_ray.tasks.number_words import reward

    counts = {"agreed": 0, "ties": 0, "disagreed": 0, "unparseable": 0}
    for row in samples:
        text = prompt_text(row["prompt"])
        distinct = list(dict.fromkeys(t for t in row["responses"] if t.strip()))
        for a, b in itertools.combinations(distinct, 2):
            right = reward(text, a) + reward(text, b)
            same_length = len(a) == len(b)
            counts[["disagreed" if same_length else "unparseable", "agreed", "ties"][int(right)]] += 1
    return counts


def test_a_judge_keeps_exactly_the_pairs_both_orders_agree_on(two_rounds, tmp_path_factory, cache_dir):
    """A stand-in judge function (right beats wrong in both orders; of two wrong answers it prefers the first shown,
    or answers with no verdict) plays each prompt's samples round robin: the pairs are the rule's (a right answer
    against a wrong one, as sampled), scored by wins, and the policy trains to the same held-out reward."""
    judged = run_online(tmp_path_factory.mktemp("online-judged"), cache_dir, 1, STAND_IN_JUDGE)
    row = judged.rounds[1]
    key = lambda p: (json.dumps(p["prompt"]), p["chosen_ids"], p["rejected_ids"])
    pairs = pairs_of(judged, 1)
    assert [key(p) for p in pairs] == [key(p) for p in pairs_of(two_rounds, 1)]
    samples = datasets.load_from_disk(str(judged.run_dir / "rounds" / "round_001" / "samples")).to_list()
    counts = stand_in_counts(samples)
    assert {k: row[f"judge/{k}"] for k in counts} == counts
    assert min(counts["agreed"], counts["disagreed"], counts["unparseable"]) > 0  # no ties: one right spelling
    assert row["judge/calls"] == 2 * sum(counts.values())
    assert row["judge/agreement"] == pytest.approx(
        (counts["agreed"] + counts["ties"]) / (sum(counts.values()) - counts["unparseable"])
    )
    wrong = {
        json.dumps(s["prompt"]): len({t for t, w in zip(s["responses"], s["rewards"]) if not w and t.strip()})
        for s in samples
    }
    assert all(p["chosen_reward"] == wrong[json.dumps(p["prompt"])] and p["rejected_reward"] == 0 for p in pairs)
    assert row["eval/sampled_reward"] == two_rounds.rounds[1]["eval/sampled_reward"]  # the task's reward evaluates


def test_online_kto_labels_every_sample_by_the_threshold_and_raises_the_held_out_accuracy(
    local_ray, tmp_path_factory, cache_dir
):
    """Online KTO: each round's samples become examples labelled by the task's rule (exactly right: desirable), saved
    in TRL's unpaired layout with the sampled tokens and a mismatched completion of another prompt, and trained with
    the KTO loss. Round checkpoints every 2 rounds: round 1 writes none."""
    kto = run_online(
        tmp_path_factory.mktemp("online-kto"),
        cache_dir,
        2,
        "algo=kto",
        "online.desirable_threshold=1",
        "online.checkpoint_every=2",
    )
    rows = kto.rounds
    assert sorted(p.name for p in (kto.run_dir / "round_checkpoints").iterdir()) == ["latest", "round_2"]
    assert rows[2]["eval/sampled_reward"] >= rows[0]["eval/sampled_reward"] + 0.15
    for r in (1, 2):
        samples = datasets.load_from_disk(str(kto.run_dir / "rounds" / f"round_{r:03d}" / "samples")).to_list()
        examples = pairs_of(kto, r)
        drawn = [
            (ids, w) for s in samples for t, ids, w in zip(s["responses"], s["response_ids"], s["rewards"]) if t.strip()
        ]
        assert len(examples) == len(drawn) == rows[r]["pairs"]  # every non-empty sample, with its sampled tokens
        assert sorted((e["completion_ids"], e["reward"]) for e in examples) == sorted(drawn)
        assert all(e["label"] == (e["reward"] >= 1) for e in examples)
        assert rows[r]["examples/desirable_share"] == pytest.approx(sum(e["label"] for e in examples) / len(examples))
        own = {json.dumps(s["prompt"]): s["response_ids"] for s in samples}
        # another prompt's answer (it may coincide with one of this prompt's own: a wrong answer that is another's)
        assert {tuple(e["mismatched_ids"]) for e in examples} <= {tuple(ids) for ids, _ in drawn}
        assert sum(e["mismatched_ids"] in own[json.dumps(e["prompt"])] for e in examples) < 0.05 * len(examples)
        assert "pairs/tied_prompt_share" not in rows[r] and "train/loss" in rows[r]


def test_a_killed_vllm_engine_is_restarted_and_the_campaign_ends_as_an_uninterrupted_one(
    async_two, tmp_path_factory, cache_dir
):
    """With asynchronous rounds: round 2 was drawn during round 1 from the starting policy, and the resumed campaign
    trains on those very samples (kept in the round-1 checkpoint), not on new ones from the round-1 policy; with
    TR-DPO, against the reference as mixed by then (kept there too), not the starting one."""
    import threading
    import time

    import ray

    run_dir = tmp_path_factory.mktemp("online-killed")
    cfg = compose(
        [
            f"output_dir={run_dir}",
            f"cache_dir={cache_dir}",
            "progress=false",
            "online.rounds=2",
            *SMALL,
            *ASYNC,
            *TR_DPO,
        ],
        "online",
    )
    campaign = OnlineCampaign(cfg)

    def kill_engine_after_round_1():
        while not (run_dir / "round_checkpoints" / "latest").exists():
            time.sleep(0.05)
        ray.kill(campaign.rollout.group.actors[0], no_restart=True)  # during round 2

    threading.Thread(target=kill_engine_after_round_1, daemon=True).start()
    began = time.perf_counter()
    result = campaign.run()
    print(f"online recovery: {time.perf_counter() - began:.1f}s with one restart")
    assert len(result.restarts) == 1 and result.resumed_from == 1
    assert pairs_of(result, 2) == pairs_of(async_two, 2)
    assert same(result.rounds[2]) == same(async_two.rounds[2])


def test_sample_statistics_count_empty_samples_and_prompts_without_a_pair():
    from dpo_ray.campaign.round_stats import sample_statistics
    from dpo_ray.workers.rollout import Sample

    drawn = [
        [Sample("good", (5, 6), -1.0), Sample("", (2,), -0.5)],
        [Sample("a", (7,), -2.0), Sample("b", (8, 9, 10), -3.0)],
    ]
    rewards = [[1.0, 0.0], [0.5, 0.5]]
    stats = sample_statistics(drawn, rewards, 0.0)  # the empty sample cannot be paired
    assert stats == {
        "reward/mean": 0.5,
        "reward/max": 1.0,
        "length/sampled": 7 / 4,
        "samples/empty_share": 0.25,
        "pairs/tied_prompt_share": 1.0,
    }  # prompt 0 has one pairable sample, prompt 1 a tie
    labelled = sample_statistics(drawn, rewards, None)  # online KTO with a threshold: every sample is an example
    assert "pairs/tied_prompt_share" not in labelled and labelled["samples/empty_share"] == 0.25


def test_a_campaign_hands_its_ranks_absolute_directories(run_config, tiny_model_dir, tmp_path, monkeypatch):
    """The default output_dir is relative and cache_dir starts with ~: a rank would resolve them in its own working
    directory and home, so the driver resolves both before any group gets the config."""
    from dpo_ray.campaign.inputs import OnlineInputs
    from dpo_ray.reward_source import reward_source

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run_config.output_dir, run_config.cache_dir = "runs/latest", "~/.cache/dpo-ray"
    inputs = OnlineInputs(tiny_model_dir, tiny_model_dir, ["p"], ["q"], reward_source(run_config))
    campaign = OnlineCampaign(run_config, inputs)
    assert campaign.cfg.output_dir == str(tmp_path / "runs" / "latest") == str(campaign.run_dir)
    assert campaign.cfg.cache_dir == str(tmp_path / "home" / ".cache" / "dpo-ray")


def test_groups_start_together_in_reservations_made_in_order_and_a_failure_leaves_the_others_to_shut_down(local_ray):
    import threading
    import time

    from ray.util import placement_group_table
    from ray.util.placement_group import remove_placement_group

    from dpo_ray.campaign.group_start import start_together
    from dpo_ray.sizing.resources import GroupNeed

    needs = [GroupNeed("a", 1, 0.5, 0), GroupNeed("b", 2, 0.5, 0)]
    given, threads = {}, set()

    def maker(name):
        def make(placement):
            given[name] = placement
            threads.add(threading.current_thread().name)
            time.sleep(1.0)
            return name

        return make

    began, started = time.perf_counter(), []
    assert start_together({"a": maker("a"), "b": maker("b")}, needs, "PACK", started) == {"a": "a", "b": "b"}
    assert time.perf_counter() - began < 1.9 and len(threads) == 2  # at once, not one after the other
    assert started == ["a", "b"] and [len(given[n].bundle_specs) for n in "ab"] == [1, 2]
    for placement in given.values():
        remove_placement_group(placement)

    def fail(placement):
        given["failed"] = placement
        raise RuntimeError("b could not start")

    started = []
    with pytest.raises(RuntimeError, match="b could not start"):
        start_together({"a": maker("a"), "b": fail}, needs, "PACK", started)
    assert started == ["a"]  # for the caller to shut down
    assert placement_group_table(given["failed"])["state"] == "REMOVED"
    remove_placement_group(given["a"])
