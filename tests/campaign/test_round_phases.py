"""An online round's phases without Ray: stand-in groups that return fixed values and record what they are given, a
real round store in a temporary directory, and expectations worked out by hand."""

from __future__ import annotations

import itertools
import logging
import random

import datasets
import pytest

from dpo_ray.campaign.inputs import OnlineInputs
from dpo_ray.campaign.round_phases import (
    PHASES,
    Groups,
    PhaseTimer,
    RoundContext,
    RoundRecord,
    draw_samples,
    evaluate,
    evaluate_round,
    make_pairs,
    mixed_in,
    round_prompts,
    run_round,
    score_reference,
    score_samples,
    sync_engines,
    train_policy,
    wait_for_engines,
)
from dpo_ray.campaign.round_store import RoundStore, save_rows
from dpo_ray.campaign.rounds_ahead import RoundsAhead
from dpo_ray.data.tokenize import TokenizedPair, TokenizeSettings
from dpo_ray.data.tournament import Tally
from dpo_ray.reward_source import reward_source
from dpo_ray.schema import RunConfig
from dpo_ray.workers.rollout import Draw, Sample
from dpo_ray.workers.weights import CURRENT, ROUND_START, START

from ..conftest import make_pairs as random_pairs

POOL = ["p0", "p1", "p2"]
POOL_IDS = [(1, 10), (1, 11), (1, 12)]
SEED = 1234  # online.seed's default


def seed_of(r: int, i: int) -> int:
    """The sampling seed of round r's prompt i, by the rule the engines are seeded with."""
    return (SEED * 1_000_003 + r * 100_003 + i) % 2**31


class Pending:
    """A generation under way: its samples once asked for, and the engines' span."""

    def __init__(self, samples, launched_at: float):
        self.samples, self.launched_at, self.finished_at = samples, launched_at, None

    def result(self):
        self.finished_at = self.launched_at + 2.0
        return self.samples


class Rollout:
    """Engines whose samples for each prompt are given up front (training draws, held-out draws and greedy ones)."""

    def __init__(self, calls: list, drawn: dict, held_out: list | None = None, greedy: list | None = None):
        self.calls, self.drawn, self.held_out, self.greedy = calls, drawn, held_out, greedy
        self.submitted: list[tuple] = []

    def submit_generate(self, prompts, seeds, n, temperature, top_p, max_tokens):
        self.calls.append("submit")
        self.submitted.append((prompts, seeds, n))
        return Pending([self.drawn[p] for p in prompts], launched_at=50.0 + len(self.submitted))

    def draw(self, prompts, seeds, draws):
        self.calls.append("draw")
        self.submitted.append((prompts, seeds, draws))
        return [[self.greedy if d.temperature == 0.0 else self.held_out for _ in prompts] for d in draws]


class Reward:
    """A reward whose scores are given per prompt; held-out texts score their length."""

    def __init__(self, calls: list, scores: dict | None = None):
        self.calls, self.scores = calls, scores or {}

    def score(self, prompts, samples):
        self.calls.append("score")
        return [self.scores.get(p) or [float(len(t)) for t in texts] for p, texts in zip(prompts, samples)]


class Judge:
    def __init__(self, calls: list, tallies: list[Tally]):
        self.calls, self.tallies = calls, tallies

    def tournament(self, prompts, samples):
        self.calls.append("tournament")
        self.given = (prompts, samples)
        return self.tallies


class Reference:
    """Reference log-probs of minus the response length, less a half; records what it scored."""

    def __init__(self, calls: list):
        self.calls, self.given, self.streamed = calls, [], []

    def logps(self, pairs, batches, policy, mixes=0, weights=START, stream=False):
        self.calls.append("logps")
        self.given.append((pairs, batches, policy, mixes, weights))
        self.streamed.append(stream)
        less = 0.25 if weights == ROUND_START else 0.5  # the round's reference: -len - 0.25
        return ([-len(p.chosen_ids) - less for p in pairs], [-len(p.rejected_ids) - less for p in pairs]), True


class Trainer:
    """A step per epoch, and the metrics of a last step."""

    def __init__(self, calls: list):
        self.calls, self.step, self.given = calls, 7, []
        self.last_metrics = {"loss": 0.25, "rewards/margins": 0.5, "grad_norm": 3.0}

    def train(self, pairs, ref, epochs, shuffle_seed, reference_mixes=0):
        self.calls.append("train")
        self.given.append((pairs, ref, epochs, shuffle_seed, reference_mixes))
        self.step += epochs


class Sync:
    def __init__(self, calls: list):
        self.calls = calls

    def __call__(self):
        self.calls.append("sync")


class Mix:
    mixes = 3


class Policy:
    def __init__(self, calls: list):
        self.calls = calls

    def snapshot_weights(self):
        self.calls.append("snapshot")


def a_context(tmp_path, cfg: RunConfig | None = None, *, drawn=None, scores=None, judge=None, reward=True, **kw):
    """A round context over the three-prompt pool; kw sets its other fields (uses_reference, unpaired, ahead...)."""
    cfg = cfg or RunConfig()
    calls: list[str] = []
    drawn = drawn or {p: [Sample(f"{p}-a", (20,)), Sample(f"{p}-b", (21, 22))] for p in POOL}
    held_out = [Sample("ab", (5, 6), -1.0), Sample("c", (7,), -2.0)]
    rollout = Rollout(calls, drawn, held_out, [Sample("abc", (5, 6, 7))])
    groups = Groups(
        rollout=rollout,
        reward=Reward(calls, scores) if reward else None,
        judge=Judge(calls, judge) if judge is not None else None,
        reference=Reference(calls),
        policy=Policy(calls),
        sync=Sync(calls),
        mix=kw.pop("mix", None),
        eval_judge=kw.pop("eval_judge", None),
    )
    fields = dict(
        cfg=cfg,
        inputs=OnlineInputs("model", "model", list(POOL), ["q0"], reward_source(cfg), kw.pop("offline_pairs", [])),
        prompt_ids=list(POOL_IDS),
        eval_prompt_ids=[(2, 30)],
        uses_reference=True,
        unpaired=False,
        store=RoundStore(tmp_path, 1, TokenizeSettings()),
        groups=groups,
        trainer=Trainer(calls),
        ahead=RoundsAhead(0, cfg.online.rounds),
        began=0.0,
    )
    context = RoundContext(**{**fields, **kw})
    context.calls = calls
    return context


def test_generate_draws_every_prompt_from_the_engines_weights_and_records_their_span(tmp_path):
    context = a_context(tmp_path, engine_version=1)
    record = RoundRecord(2)
    draw_samples(record, context)
    assert context.groups.rollout.submitted == [(POOL, [seed_of(2, i) for i in range(3)], 4)]
    assert record.indices == [0, 1, 2] and record.prompts == POOL and record.version == 1
    assert record.samples == [[f"{p}-a", f"{p}-b"] for p in POOL]
    assert record.drawn[1] == [Sample("p1-a", (20,)), Sample("p1-b", (21, 22))]
    assert record.spans == [["draw", 51.0, 53.0]]  # launched, and done two seconds later (Pending)


def test_generate_samples_prompts_per_round_and_draws_the_rounds_ahead_from_the_weights_it_has(tmp_path):
    cfg = RunConfig()
    cfg.online.prompts_per_round, cfg.online.rounds = 2, 3
    context = a_context(tmp_path, cfg, ahead=RoundsAhead(1, 3))
    record = RoundRecord(1)
    draw_samples(record, context)
    chosen = {r: sorted(random.Random(SEED + r).sample(range(3), 2)) for r in (1, 2)}  # seeded per round
    assert record.indices == chosen[1] and record.prompts == [POOL[i] for i in chosen[1]]
    assert [s[1] for s in context.groups.rollout.submitted] == [[seed_of(r, i) for i in chosen[r]] for r in (1, 2)]
    assert list(context.ahead.rounds) == [2] and record.version == 0  # round 2 drawn ahead, from the same weights


def test_score_takes_the_rewards_without_a_judge(tmp_path):
    context = a_context(tmp_path, scores={"p0": [0.5, 0.25]})
    record = RoundRecord(1, prompts=["p0"], samples=[["x", "y"]])
    score_samples(record, context)
    assert record.rewards == [[0.5, 0.25]] and record.beats is None and record.judging == {}


def test_score_with_a_judge_uses_its_wins_as_rewards_and_keeps_its_agreed_beats(tmp_path):
    tallies = [Tally([2.0, 0.0, 1.0], {(0, 1), (0, 2), (2, 1)}, agreed=3, named=6, first_shown=3)]
    context = a_context(tmp_path, judge=tallies)
    record = RoundRecord(1, prompts=["p0"], samples=[["x", "y", "z"]])
    score_samples(record, context)
    assert record.rewards == [[2.0, 0.0, 1.0]] and record.beats == [{(0, 1), (0, 2), (2, 1)}]
    assert context.calls == ["tournament"]  # the reward is not asked
    assert {k: record.judging[k] for k in ("judge/calls", "judge/comparisons", "judge/agreed", "judge/agreement")} == {
        "judge/calls": 6,
        "judge/comparisons": 3,
        "judge/agreed": 3,
        "judge/agreement": 1.0,
    }


def drawn_four() -> RoundRecord:
    """Round 1 over p0 and p1, four samples each (sample j of p0 has ids (30 + j,), of p1 (40 + j, 40 + j))."""
    drawn = [
        [Sample(f"{p}-{j}", (base + j,) * width) for j in range(4)] for p, base, width in (("p0", 30, 1), ("p1", 40, 2))
    ]
    record = RoundRecord(1, indices=[0, 1], prompts=["p0", "p1"], drawn=drawn, version=0)
    record.samples = [[s.text for s in outs] for outs in drawn]
    record.rewards = [[0.1, 0.9, 0.5, 0.3], [1.0, 1.2, 1.0, 1.1]]
    return record


def test_pairs_are_the_best_against_the_worst_beyond_min_margin_as_the_samples_token_ids(tmp_path):
    cfg = RunConfig()
    cfg.online.min_margin, cfg.online.max_pairs_per_prompt = 0.5, 2
    context = a_context(tmp_path, cfg)
    record = drawn_four()
    make_pairs(record, context)
    # p0: 0.9 vs 0.1 (gap 0.8) kept, then 0.5 vs 0.3 (0.2) is within the margin; p1's best gap is 0.2: no pair
    assert [(row["chosen"], row["rejected"]) for row in record.pair_rows] == [("p0-1", "p0-0")]
    assert record.new_pairs == record.train_pairs == [TokenizedPair((1, 10), (31,), (30,))]
    samples = datasets.load_from_disk(str(context.store.round_dir(1) / "samples"))
    assert samples["rewards"] == record.rewards and samples["policy_version"] == [0, 0]
    assert samples["response_ids"][1] == [[40, 40], [41, 41], [42, 42], [43, 43]]


def test_pairs_keep_only_what_the_judge_agreed_on(tmp_path):
    context = a_context(tmp_path)
    record = drawn_four()
    record.beats = [{(1, 0)}, set()]  # p1: the judge's orders agreed on nothing
    make_pairs(record, context)
    assert record.new_pairs == [TokenizedPair((1, 10), (31,), (30,))]


def test_online_kto_labels_each_sample_at_the_threshold_beside_another_completion(tmp_path):
    cfg = RunConfig()
    cfg.online.desirable_threshold = 0.5
    context = a_context(tmp_path, cfg, unpaired=True)
    record = drawn_four()
    record.indices, record.prompts, record.drawn = [0], ["p0"], record.drawn[:1]
    record.samples, record.rewards = record.samples[:1], [[0.1, 0.9, 0.5, 0.3]]
    make_pairs(record, context)
    # desirable first (0.9, 0.5), then undesirable (0.1, 0.3); one prompt: each beside the previous completion
    completions = [(31,), (32,), (30,), (33,)]
    labels = [True, True, False, False]
    expected = [
        TokenizedPair((1, 10), c, completions[i - 1], label) for i, (c, label) in enumerate(zip(completions, labels))
    ]
    assert record.new_pairs == expected


def test_conversation_prompts_pair_assistant_messages(tmp_path):
    context = a_context(tmp_path)
    conversation = [{"role": "user", "content": "hi"}]
    drawn = [[Sample("good", (5,)), Sample("bad", (6,))]]
    record = RoundRecord(1, indices=[0], prompts=[conversation], drawn=drawn, samples=[["good", "bad"]])
    record.rewards = [[1.0, 0.0]]
    make_pairs(record, context)
    assert record.pair_rows[0]["chosen"] == [{"role": "assistant", "content": "good"}]
    assert record.pair_rows[0]["rejected"] == [{"role": "assistant", "content": "bad"}]


def test_replay_and_offline_pairs_are_mixed_in_by_ratio(tmp_path):
    """The mixing reads earlier rounds' pair datasets from the run directory, as the ids they hold."""
    cfg = RunConfig()
    cfg.online.replay_ratio, cfg.online.offline_ratio = 1.0, 0.5
    offline = random_pairs(30, seed=3)
    context = a_context(tmp_path, cfg, offline_pairs=offline)
    for r, count in ((1, 3), (2, 0)):  # round 2 yielded no pairs
        rows = [
            {
                "prompt": f"q{i}",
                "chosen": "yes",
                "rejected": "no",
                "chosen_reward": 1.0,
                "rejected_reward": 0.0,
                "prompt_ids": [5, 6, i],
                "chosen_ids": [7, 8, 9],
                "rejected_ids": [10],
            }
            for i in range(count)
        ]
        save_rows(context.store.round_dir(r) / "pairs", rows)
    extra = mixed_in(context, 3, 4)
    replayed, from_offline = extra[:3], extra[3:]
    assert len(replayed) == 3 and len(from_offline) == 2  # at most what earlier rounds hold; 0.5 x 4 offline
    assert sorted(replayed, key=lambda p: p.prompt_ids) == [
        TokenizedPair((5, 6, i), (7, 8, 9), (10,)) for i in range(3)
    ]
    assert all(p in offline for p in from_offline) and not any(p in offline for p in replayed)
    assert mixed_in(context, 3, 4) == extra  # seeded


PAIRS = [TokenizedPair((1,), (2, 3), (4,)), TokenizedPair((1,), (5,), (6, 7, 8))]


def test_the_reference_scores_the_training_pairs_in_the_policys_first_micro_batches(tmp_path):
    cfg = RunConfig()
    cfg.train.batch_size, cfg.train.micro_batch_size, cfg.data.shuffle_seed = 2, 1, 5
    context = a_context(tmp_path, cfg, mix=Mix())
    record = RoundRecord(2, train_pairs=list(PAIRS))
    score_reference(record, context)
    assert record.ref == ([-2.5, -1.5], [-1.5, -3.5])  # the stand-in's: minus each response's length, less a half
    [(pairs, batches, policy, mixes, weights)] = context.groups.reference.given
    order = list(range(2))
    random.Random(5 + 1000 * 2).shuffle(order)  # round 2's first epoch; a micro-batch of one pair each
    assert pairs == PAIRS and batches == [[i] for i in order] and policy is None and mixes == 3
    assert weights == START
    assert context.groups.reference.streamed == [False]  # TR-DPO mixes into the reference group between steps


def test_a_frozen_reference_groups_log_probs_are_sent_to_be_read_while_the_policy_trains(tmp_path):
    context = a_context(tmp_path)
    score_reference(RoundRecord(1, train_pairs=list(PAIRS)), context)
    evaluate(context)
    assert context.groups.reference.streamed == [True, True]  # the round's pairs, the held-out KL's


def test_train_reads_streamed_reference_log_probs_and_puts_the_pass_on_the_timeline(tmp_path):
    """The trainer gets the stream's log-probs as they are; after training the record holds plain lists (the round's
    row reads them) and the reference group's span, from its first wave's sending to its last wave's end."""
    from dpo_ray.campaign.reference_stream import ReferenceStream, StreamedScores

    class Wave:
        def __init__(self, launched_at, finished_at, scores):
            self.launched_at, self.finished_at, self.scores = launched_at, finished_at, scores

        def result(self):
            return self.scores

    waves = [([1], Wave(3.0, 4.0, ([0.0, -2.0], [0.0, -4.0]))), ([0], Wave(3.5, 6.0, ([-1.0, 0.0], [-3.0, 0.0])))]
    stream = ReferenceStream(2, waves)
    context = a_context(tmp_path)
    record = RoundRecord(1, train_pairs=list(PAIRS), ref=stream.logps)
    train_policy(record, context)
    [(_, given, *_)] = context.trainer.given
    assert all(isinstance(side, StreamedScores) for side in given)
    assert record.ref == ([-1.0, -2.0], [-3.0, -4.0])
    assert record.spans == [["reference pass", 3.0, 6.0]]


def test_with_lora_the_reference_is_the_policy_without_its_adapter(tmp_path):
    cfg = RunConfig()
    cfg.model.lora.enabled = True
    context = a_context(tmp_path, cfg)
    score_reference(RoundRecord(1, train_pairs=list(PAIRS)), context)
    assert context.groups.reference.given[0][2:] == (context.groups.policy, 0, START)


def test_each_round_the_policy_scores_its_round_as_it_begins_and_keeps_a_snapshot_when_the_round_evaluates(tmp_path):
    """online.reference_update=each_round: the policy group, as it is before the round's first step, is the
    reference (no reference group, no cache); a round that ends with an evaluation first keeps its weights, against
    which the evaluation reports a second KL."""
    cfg = RunConfig()
    cfg.online.reference_update, cfg.online.rounds, cfg.online.eval_every = "each_round", 3, 2
    context = a_context(tmp_path, cfg)
    for r in (1, 2):
        score_reference(RoundRecord(r, train_pairs=list(PAIRS)), context)
    assert context.calls == ["logps", "snapshot", "logps"]  # round 1 does not evaluate, round 2 does
    assert [given[2:] for given in context.groups.reference.given] == [(context.groups.policy, 0, CURRENT)] * 2
    metrics = evaluate(context, round_reference=True)
    # sampled "ab" (logp -1, 2 tokens) and "c" (logp -2, 1 token): the start gives -len - 0.5, the round's -len - 0.25
    assert metrics["eval/kl"] == ((-1.0 - -2.5) + (-2.0 - -1.5)) / 2
    assert metrics["eval/kl_to_round_reference"] == ((-1.0 - -2.25) + (-2.0 - -1.25)) / 2
    assert [given[2:] for given in context.groups.reference.given[2:]] == [
        (None, 0, START),
        (context.groups.policy, 0, ROUND_START),
    ]


@pytest.mark.parametrize("uses_reference, pairs", [(False, PAIRS), (True, [])])
def test_the_reference_phase_is_skipped_without_a_reference_or_without_pairs(tmp_path, uses_reference, pairs):
    context = a_context(tmp_path, uses_reference=uses_reference)
    record = RoundRecord(1, train_pairs=list(pairs))
    score_reference(record, context)
    assert record.ref is None and context.calls == []


def test_train_runs_the_rounds_epochs_and_keeps_the_last_steps_metrics(tmp_path):
    cfg = RunConfig()
    cfg.online.epochs_per_round, cfg.data.shuffle_seed = 3, 5
    context = a_context(tmp_path, cfg, mix=Mix())
    ref = ([-1.0, -2.0], [-3.0, -4.0])
    record = RoundRecord(2, train_pairs=list(PAIRS), ref=ref)
    train_policy(record, context)
    assert context.trainer.given == [(PAIRS, ref, 3, 2005, 3)]  # epochs, shuffle seed 5 + 1000 x 2, TR-DPO's mixes
    assert record.steps == 3 and record.train_metrics == {"train/rewards/margins": 0.5, "train/loss": 0.25}


def test_train_without_pairs_leaves_the_policy_and_warns(tmp_path, caplog):
    context = a_context(tmp_path)
    record = RoundRecord(4)
    with caplog.at_level(logging.WARNING):
        train_policy(record, context)
    assert context.calls == [] and record.steps == 0
    assert "round 4: no pairs (every prompt's samples tied); the policy is unchanged" in caplog.messages


def test_wait_settles_every_round_drawn_ahead(tmp_path):
    context = a_context(tmp_path, ahead=RoundsAhead(2, 5))
    context.ahead.launch(1, 0, lambda k: Pending([[Sample(str(k), (k,))]], float(k)))
    context.ahead.take(1)
    wait_for_engines(RoundRecord(1), context)
    assert [d.samples for d in context.ahead.rounds.values()] == [[[Sample("2", (2,))]], [[Sample("3", (3,))]]]


@pytest.mark.parametrize("pairs, syncs", [(PAIRS, ["sync"]), ([], [])])
def test_sync_pushes_trained_weights_and_the_engines_hold_round_r_either_way(tmp_path, pairs, syncs):
    context = a_context(tmp_path, engine_version=1)
    sync_engines(RoundRecord(2, train_pairs=list(pairs)), context)
    assert context.calls == syncs and context.engine_version == 2


def test_eval_runs_on_every_eval_every_th_round_and_the_last(tmp_path):
    cfg = RunConfig()
    cfg.online.rounds, cfg.online.eval_every = 5, 2
    context = a_context(tmp_path, cfg)
    evaluated = []
    for r in range(1, 6):
        record = RoundRecord(r)
        evaluate_round(record, context)
        if record.evaluation:
            evaluated.append(r)
    assert evaluated == [2, 4, 5]


def test_the_held_out_evaluation_scores_sampled_and_greedy_draws_and_the_kl(tmp_path):
    context = a_context(tmp_path)
    metrics = evaluate(context)
    # sampled "ab" (logp -1, ids (5, 6)) and "c" (logp -2, ids (7,)); greedy "abc"; rewards are text lengths
    assert metrics == {
        "eval/sampled_reward": (2 + 1) / 2,
        "eval/greedy_reward": 3.0,
        "eval/length": (2 + 1) / 2,
        "eval/kl": ((-1.0 - -2.5) + (-2.0 - -1.5)) / 2,  # the reference gives -len - 0.5
    }
    assert context.calls == ["draw", "logps", "score"]  # the KL's pairs go to the reference before the rewards
    o = context.cfg.online  # one call: the samples with their log-probs, and the greedy answers
    assert context.groups.rollout.submitted == [
        (["q0"], [seed_of(0, 0)], [Draw(4, 1.0, o.top_p, o.max_tokens, True), Draw(1, 0.0, 1.0, o.max_tokens)])
    ]


def test_a_held_out_judge_plays_each_rounds_greedy_answers_against_the_starting_policys(tmp_path):
    """eval.judge_*: round 0 keeps the starting policy's greedy answers in the run directory and reports no win rate;
    a later round's greedy answers play them (candidate first; the stand-in judge's tally: the candidate won). With
    eval.reference_answers the file's answers are the baseline from round 0 on, and nothing is kept."""
    import json

    won = Tally(wins=[1.0, 0.0], beats={(0, 1)}, agreed=1)
    judge = Judge([], [won])
    context = a_context(tmp_path, eval_judge=judge)
    assert not any(k.startswith("eval/win") for k in evaluate(context, 0))
    kept = tmp_path / "eval_baseline.jsonl"
    assert [json.loads(line) for line in kept.read_text().splitlines()] == [{"prompt": "q0", "response": "abc"}]
    context.groups.rollout.greedy = [Sample("abcd", (5, 6, 7, 8))]
    metrics = evaluate(context, 1)
    assert judge.given == (["q0"], [["abcd", "abc"]])
    assert metrics["eval/win_rate"] == 1.0 and metrics["eval/length_ratio"] == 4 / 3
    kept.unlink()
    context.inputs.eval_baseline = ["xyz"]
    assert evaluate(context, 0)["eval/win_rate"] == 1.0 and judge.given == (["q0"], [["abcd", "xyz"]])
    assert not kept.exists()


def test_a_run_without_a_task_reward_or_a_reference_evaluates_the_length_alone(tmp_path):
    context = a_context(tmp_path, reward=False, uses_reference=False)
    assert evaluate(context) == {"eval/length": 1.5}
    o = context.cfg.online
    assert context.groups.rollout.submitted == [(["q0"], [seed_of(0, 0)], [Draw(4, 1.0, o.top_p, o.max_tokens)])]


def test_the_timer_times_each_phase_puts_its_spans_after_it_and_logs_it(caplog):
    clock = iter([10.0, 11.0, 13.0, 20.0]).__next__
    timer, record = PhaseTimer(1, 3, 4.0, clock), RoundRecord(1)
    with caplog.at_level(logging.INFO):
        timer.time("generate", lambda rec, ctx: rec.spans.append(["draw", 5.0, 9.0]), record, None)
        timer.time("score", lambda rec, ctx: None, record, None)
    assert timer.seconds == {"generate": 1.0, "score": 2.0} and timer.elapsed() == 10.0
    assert timer.timeline == [["generate", 6.0, 7.0], ["draw", 1.0, 5.0], ["score", 7.0, 9.0]]
    assert caplog.messages == ["round 1/3: generate done in 1.0s", "round 1/3: score done in 2.0s"]


def test_a_round_runs_its_phases_in_order_and_rows_them_as_rounds_jsonl_does(tmp_path):
    cfg = RunConfig()
    cfg.online.rounds = 1
    drawn = {p: [Sample(f"{p}-a", (20,)), Sample(f"{p}-b", (21, 22))] for p in POOL}
    scores = {"p0": [1.0, 0.0], "p1": [0.5, 0.5], "p2": [0.0, 2.0]}
    context = a_context(tmp_path, cfg, drawn=drawn, scores=scores, began=95.0)
    row = run_round(context, 1, clock=itertools.count(100.0).__next__)
    generate, score, reference, train, sync = ["submit"], ["score"], ["logps"], ["train"], ["sync"]
    evaluation = ["draw", "logps", "score"]  # sampled and greedy drawn together and scored together, the KL sent first
    assert context.calls == generate + score + reference + train + sync + evaluation
    assert list(row) == [
        "round",
        "prompts",
        "policy_version",
        "reward/mean",
        "reward/max",
        "length/sampled",
        "samples/empty_share",
        "pairs/tied_prompt_share",
        "pairs",
        "train_pairs",
        "steps",
        "length/chosen",
        "length/rejected",
        "pairs/chosen_longer_share",
        "pairs/near_identical_share",
        "pairs/reference_disagrees",
        "train/rewards/margins",
        "train/loss",
        "eval/sampled_reward",
        "eval/greedy_reward",
        "eval/length",
        "eval/kl",
        *(f"time/{phase}" for phase in ("generate", "score", "pairs", "reference", "train", "wait", "sync", "eval")),
        "time/round",
        "timeline",
    ]
    # p0: "p0-a" (ids (20,)) over "p0-b" ((21, 22)); p1 tied; p2: "p2-b" over "p2-a"
    assert {k: row[k] for k in ("round", "prompts", "policy_version", "pairs", "train_pairs", "steps")} == {
        "round": 1,
        "prompts": 3,
        "policy_version": 0,
        "pairs": 2,
        "train_pairs": 2,
        "steps": 2,  # the stand-in's step per epoch, two epochs a round
    }
    assert row["reward/mean"] == 4.0 / 6 and row["pairs/tied_prompt_share"] == 1 / 3
    assert row["length/chosen"] == 1.5 and row["pairs/chosen_longer_share"] == 0.5
    # per token the reference (-len - 0.5) prefers (21, 22) at -2.5 / 2 to (20,) at -1.5: p0's rejected, p2's chosen
    assert row["pairs/reference_disagrees"] == 0.5
    assert [row[f"time/{phase}"] for phase in PHASES] == [1.0] * 8 and row["time/round"] == 9.0
    assert [entry[0] for entry in row["timeline"]] == ["generate", "draw", *list(PHASES)[1:]]
    assert row["timeline"][:2] == [["generate", 5.0, 6.0], ["draw", 51.0 - 95.0, 53.0 - 95.0]]
    assert context.engine_version == 1


def online_config(order: str, per_round: int, seed: int = 1234) -> RunConfig:
    cfg = RunConfig()
    cfg.online.prompt_order, cfg.online.prompts_per_round, cfg.online.seed = order, per_round, seed
    return cfg


def test_fresh_prompts_never_repeat_until_the_pool_is_used_up_then_a_new_seeded_pass_begins():
    """12 prompts, 3 a round: rounds 1-4 use each prompt exactly once, in a seeded order; rounds 5-8 are another pass
    (each prompt once more, in another order). 10 prompts, 3 a round: 3 rounds a pass, one prompt left out of each."""
    cfg = online_config("fresh", 3)
    rounds = {r: round_prompts(cfg, 12, r) for r in range(1, 9)}
    assert all(len(ids) == 3 and len(set(ids)) == 3 for ids in rounds.values())
    first, second = [i for r in (1, 2, 3, 4) for i in rounds[r]], [i for r in (5, 6, 7, 8) for i in rounds[r]]
    assert sorted(first) == sorted(second) == list(range(12))
    assert [rounds[r] for r in (1, 2, 3, 4)] != [rounds[r] for r in (5, 6, 7, 8)]
    # a function of the round alone: asked in any order, by a resumed campaign, it answers the same
    assert [round_prompts(cfg, 12, r) for r in (8, 3, 5, 1)] == [rounds[r] for r in (8, 3, 5, 1)]
    assert rounds != {r: round_prompts(online_config("fresh", 3, seed=1), 12, r) for r in range(1, 9)}
    short = [round_prompts(cfg, 10, r) for r in range(1, 7)]
    for one_pass in (short[:3], short[3:]):
        used = [i for ids in one_pass for i in ids]
        assert len(used) == len(set(used)) == 9


def test_sampled_prompts_are_a_seeded_subset_per_round_as_before_and_every_prompt_without_a_subset():
    cfg = online_config("sample", 3)
    for r in (1, 2, 3):
        assert round_prompts(cfg, 12, r) == sorted(random.Random(1234 + r).sample(range(12), 3))
    everything = list(range(5))
    assert (
        round_prompts(online_config("sample", 0), 5, 1) == round_prompts(online_config("sample", 9), 5, 2) == everything
    )
