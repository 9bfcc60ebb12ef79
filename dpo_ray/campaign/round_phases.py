"""An online round as explicit phases, each a function of the round's record and the campaign's context, timed in one
place: a new phase is a local change, and each phase runs in a test without Ray."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..data.examples import build_examples
from ..data.formats import Text
from ..data.pair_stats import example_statistics, pair_statistics
from ..data.pairs import build_pairs
from ..data.tokenize import TokenizedPair
from ..data.tournament import judge_statistics
from ..groups.judge_group import JudgeGroup
from ..groups.policy_group import PolicyGroup
from ..groups.reference_mix import ReferenceMix
from ..groups.reward_group import RewardGroup
from ..groups.rollout_group import RolloutGroup
from ..groups.weight_sync import WeightSync
from ..report.win_rate import win_rate
from ..schema import RunConfig
from ..workers.rollout import Draw, Sample
from ..workers.user_code import UserCodeError, one_line
from ..workers.weights import CURRENT, ROUND_START, START
from . import round_stats as stats
from .inputs import OnlineInputs
from .reference import ReferenceLogps, ReferenceScorer
from .reference_stream import streamed
from .round_store import DRAWN, RoundStore
from .rounds_ahead import RoundsAhead
from .trainer import PolicyTrainer, epoch_groups, eval_groups

log = logging.getLogger(__name__)
TRAIN_KEYS = ("rewards/margins", "rewards/accuracies", "loss")  # the round's last training step, kept in its row


@dataclass
class Groups:
    """The groups an online campaign drives, and the weight sync from the policy into the engines."""

    rollout: RolloutGroup
    reward: RewardGroup | None  # None: a judged run whose task has no reward to evaluate with
    judge: JudgeGroup | None  # a pairwise judge scores the samples instead of the reward
    reference: ReferenceScorer
    policy: PolicyGroup
    sync: WeightSync
    mix: ReferenceMix | None  # TR-DPO's moving reference
    eval_judge: JudgeGroup | None = None  # plays the held-out answers against a baseline's (eval.*)

    @property
    def mixes(self) -> int:
        """How many times TR-DPO has mixed the policy into the reference so far."""
        return self.mix.mixes if self.mix is not None else 0


@dataclass
class RoundContext:
    """What every round of an attempt reads: the run's settings and prompts, where the rounds are kept, the groups, the
    trainer, the rounds drawn ahead, and the policy version the engines hold."""

    cfg: RunConfig
    inputs: OnlineInputs
    prompt_ids: list[tuple[int, ...]]  # each prompt encoded as the engines are given it
    eval_prompt_ids: list[tuple[int, ...]]
    uses_reference: bool
    unpaired: bool  # online KTO: each round's samples become labelled examples
    store: RoundStore
    groups: Groups
    trainer: PolicyTrainer
    ahead: RoundsAhead
    began: float  # the attempt's start (time.perf_counter): the round rows' timelines count from here
    engine_version: int = 0  # the policy version (rounds trained) in the engines


@dataclass
class RoundRecord:
    """What round r has produced so far: each phase fills in its part."""

    r: int
    indices: list[int] = field(default_factory=list)  # the round's prompts, as indices into the pool
    prompts: list[Text] = field(default_factory=list)
    drawn: list[list[Sample]] = field(default_factory=list)  # n samples per prompt
    samples: list[list[str]] = field(default_factory=list)  # their texts
    version: int = 0  # rounds trained when the samples were drawn: r - 1, less when drawn ahead
    rewards: list[list[float]] = field(default_factory=list)
    beats: list[set[tuple[int, int]]] | None = None  # a judge's agreed (winner, loser) sample indices per prompt
    judging: dict[str, float] = field(default_factory=dict)  # the judge's counts (judge_statistics)
    pair_rows: list[dict] = field(default_factory=list)  # the round's pairs (KTO: examples) as written to disk
    new_pairs: list[TokenizedPair] = field(default_factory=list)  # those read back as token ids, truncated
    train_pairs: list[TokenizedPair] = field(default_factory=list)  # the new pairs, then replayed and offline ones
    ref: ReferenceLogps | None = None  # the reference's (chosen, rejected) log-probs of train_pairs
    steps: int = 0  # optimizer steps the round took
    train_metrics: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, float] = field(default_factory=dict)
    spans: list[list] = field(default_factory=list)  # [name, start, end] (time.perf_counter) of work apart from phases


Phase = Callable[[RoundRecord, RoundContext], None]


class PhaseTimer:
    """One round's clock: each phase's seconds, its [phase, start s, end s] on the attempt's timeline, a log line."""

    def __init__(self, r: int, rounds: int, began: float, clock: Callable[[], float] = time.perf_counter):
        self.r, self.rounds, self.began, self.clock = r, rounds, began, clock
        self.started = self.last = clock()
        self.seconds: dict[str, float] = {}
        self.timeline: list[list] = []

    def time(self, name: str, phase: Phase, record: RoundRecord, context: RoundContext) -> None:
        """Run phase; the spans it recorded (the engines' draw) follow its own on the timeline."""
        recorded = len(record.spans)
        phase(record, context)
        now = self.clock()
        self.seconds[name], self.last = now - self.last, now
        self.timeline.append([name, self.last - self.seconds[name] - self.began, self.last - self.began])
        self.timeline += [[span, start - self.began, end - self.began] for span, start, end in record.spans[recorded:]]
        log.info("round %d/%d: %s done in %.1fs", self.r, self.rounds, name, self.seconds[name])

    def elapsed(self) -> float:
        return self.clock() - self.started


def draw_samples(record: RoundRecord, context: RoundContext) -> None:
    """The round's samples: drawn now, or already drawn ahead (the rounds after it are launched up to max_staleness)."""
    r, ahead = record.r, context.ahead
    ahead.launch(r, context.engine_version, lambda k: submit_round(context, k))
    drawn = ahead.take(r)
    record.drawn, record.version = drawn.samples, drawn.version
    record.indices = round_prompts(context.cfg, len(context.inputs.prompts), r)
    record.prompts = [context.inputs.prompts[i] for i in record.indices]
    record.samples = stats.texts(drawn.samples)
    if drawn.launched_at is not None:  # the engines' own span (drawn ahead: it overlaps earlier phases)
        record.spans.append(["draw", drawn.launched_at, drawn.finished_at])
        context.store.save_drawn(r, drawn)


def score_samples(record: RoundRecord, context: RoundContext) -> None:
    """Each sample's reward; with a pairwise judge, the comparisons it won with both orders agreeing. A user function
    that fails stops the run naming the round and where its samples are kept for the rerun."""
    judge = context.groups.judge
    try:
        if judge is not None:
            tallies = judge.tournament(record.prompts, record.samples)
            record.rewards, record.beats = [t.wins for t in tallies], [t.beats for t in tallies]
            record.judging = judge_statistics(tallies)
        else:
            record.rewards = context.groups.reward.score(record.prompts, record.samples)
    except UserCodeError as error:
        kept = context.store.round_dir(record.r) / DRAWN
        raise UserCodeError(
            f"round {record.r}: {one_line(error)}. The round's samples are kept ({kept}): fix the function and run "
            "the same command again, which scores them without generating them again"
        ) from error


def make_pairs(record: RoundRecord, context: RoundContext) -> None:
    """Best vs worst samples become pairs (online KTO: labelled examples), written with the samples; the policy trains
    on them as read back, with earlier rounds' and offline pairs mixed in."""
    o, r = context.cfg.online, record.r
    responses = [[_response(prompt, s) for s in outs] for prompt, outs in zip(record.prompts, record.samples)]
    prompt_ids = [context.prompt_ids[i] for i in record.indices]
    response_ids = [[list(s.token_ids) for s in outs] for outs in record.drawn]
    token_ids = (prompt_ids, response_ids)
    prompts, rewards, most, beats = record.prompts, record.rewards, o.max_pairs_per_prompt, record.beats
    if context.unpaired:
        rows = build_examples(prompts, responses, rewards, token_ids, o.desirable_threshold, o.min_margin, most, beats)
    else:
        rows = build_pairs(prompts, responses, rewards, o.min_margin, most, token_ids, beats)
    sample_rows = [
        {"prompt": p, "responses": s, "rewards": w, "response_ids": ids, "policy_version": record.version}
        for p, s, w, ids in zip(prompts, record.samples, rewards, response_ids)
    ]
    record.pair_rows = rows
    context.store.save(r, sample_rows, rows)
    record.new_pairs = context.store.pairs(r)
    record.train_pairs = record.new_pairs + mixed_in(context, r, len(record.new_pairs))


def score_reference(record: RoundRecord, context: RoundContext) -> None:
    """The reference's log-probs of the training pairs, each in the micro-batch the policy first sees it in; none
    without a reference or without pairs. each_round: the reference is the policy as the round begins, which scores
    them itself (and keeps a snapshot when the round evaluates, for the KL to it after training). A reference group
    of its own scores them while the policy trains (reference_stream.py): this phase only sends them, unless TR-DPO
    mixes the policy into that group between steps."""
    cfg, groups, pairs = context.cfg, context.groups, record.train_pairs
    if not context.uses_reference:
        return
    moving = each_round(cfg)
    if moving and evaluates(cfg, record.r):
        groups.policy.snapshot_weights()
    if pairs:
        batches = epoch_groups(cfg, len(pairs), shuffle_seed(cfg, record.r))
        if moving:
            record.ref, _ = groups.reference.logps(pairs, batches, groups.policy, weights=CURRENT)
        else:
            scorer, stream = adapter_base(cfg, groups.policy), groups.mix is None
            record.ref, _ = groups.reference.logps(pairs, batches, scorer, groups.mixes, stream=stream)


def train_policy(record: RoundRecord, context: RoundContext) -> None:
    """epochs_per_round passes over the training pairs; none (a warning) when the round yielded none. Reference
    log-probs still being scored are waited for as the steps read them; the pass's span joins the timeline."""
    trainer, o, r = context.trainer, context.cfg.online, record.r
    before = trainer.step
    if record.train_pairs:
        seed, mixes = shuffle_seed(context.cfg, r), context.groups.mixes
        trainer.train(record.train_pairs, record.ref, o.epochs_per_round, seed, reference_mixes=mixes)
    else:
        log.warning("round %d: no pairs (every prompt's samples tied); the policy is unchanged", r)
    stream = streamed(record.ref)
    if stream is not None:
        record.ref = stream.finish()
        record.spans.append(["reference pass", stream.launched_at, stream.finished_at])
    record.steps = trainer.step - before
    # the latest step's, which is an earlier round's when this one trained none
    record.train_metrics = {f"train/{k}": trainer.last_metrics[k] for k in TRAIN_KEYS if k in trainer.last_metrics}


def wait_for_engines(record: RoundRecord, context: RoundContext) -> None:
    """The engines finish the rounds drawn ahead before they take new weights."""
    context.ahead.settle()


def sync_engines(record: RoundRecord, context: RoundContext) -> None:
    """The trained weights into the engines (untrained, they hold them already): either way, round r's policy."""
    if record.train_pairs:
        context.groups.sync()
    context.engine_version = record.r


def evaluate_round(record: RoundRecord, context: RoundContext) -> None:
    """The held-out evaluation, on the rounds that end with one."""
    if evaluates(context.cfg, record.r):
        record.evaluation = evaluate(context, record.r, round_reference=each_round(context.cfg))


# in order; the names are the time/<phase> keys of the round rows
PHASES: dict[str, Phase] = {
    "generate": draw_samples,
    "score": score_samples,
    "pairs": make_pairs,
    "reference": score_reference,
    "train": train_policy,
    "wait": wait_for_engines,
    "sync": sync_engines,
    "eval": evaluate_round,
}


def run_round(context: RoundContext, r: int, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Round r, phase after phase: its summary row."""
    record, timer = RoundRecord(r), PhaseTimer(r, context.cfg.online.rounds, context.began, clock)
    for name, phase in PHASES.items():
        timer.time(name, phase, record, context)
    row = summary_row(record, context, timer)
    log.info("round %d: %s", r, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    return row


def summary_row(record: RoundRecord, context: RoundContext, timer: PhaseTimer) -> dict:
    """The round's line in rounds.jsonl."""
    o, new_pairs = context.cfg.online, record.new_pairs
    new_ref = None if record.ref is None else (record.ref[0][: len(new_pairs)], record.ref[1][: len(new_pairs)])
    labelled_one_by_one = context.unpaired and o.desirable_threshold is not None
    near_identical = context.cfg.monitor.near_identical_ratio
    return {
        "round": record.r,
        "prompts": len(record.prompts),
        "policy_version": record.version,  # rounds trained when the samples were drawn: r - 1, less when drawn ahead
        **({"reference_version": record.r - 1} if each_round(context.cfg) else {}),  # rounds its reference trained
        **stats.sample_statistics(record.drawn, record.rewards, None if labelled_one_by_one else o.min_margin),
        **record.judging,
        "pairs": len(new_pairs),
        "train_pairs": len(record.train_pairs),
        "steps": record.steps,
        **(example_statistics(new_pairs) if context.unpaired else pair_statistics(new_pairs, near_identical, new_ref)),
        **record.train_metrics,
        **record.evaluation,
        **{f"time/{k}": timer.seconds[k] for k in PHASES},
        "time/round": timer.elapsed(),
        "timeline": timer.timeline,  # [phase, start s, end s] from the attempt's start; "draw": the engines' span
    }


def submit_round(context: RoundContext, r: int):
    """Round r's generation, started and not waited for: n samples per prompt, seeded by round and prompt."""
    o, pool = context.cfg.online, context.inputs.prompts
    indices = round_prompts(context.cfg, len(pool), r)
    log.info("round %d/%d: generating %d prompts x %d samples", r, o.rounds, len(indices), o.samples_per_prompt)
    prompts = [pool[i] for i in indices]
    seeds = [stats.sample_seed(o.seed, r, i) for i in indices]
    n, temperature, top_p = o.samples_per_prompt, o.temperature, o.top_p
    return context.groups.rollout.submit_generate(prompts, seeds, n, temperature, top_p, o.max_tokens)


def round_prompts(cfg: RunConfig, pool: int, r: int) -> list[int]:
    """Round r's prompts, as indices into the pool of `pool`: prompts_per_round of them (seeded), or all. fresh: a
    seeded permutation of the pool per pass, cut into floor(pool / n) rounds of n, so no prompt repeats within a pass
    (the last pool % n of a pass wait for a later one); a function of the round alone, so a resume draws the same."""
    o = cfg.online
    n = o.prompts_per_round
    if not n or n >= pool:
        return list(range(pool))
    if o.prompt_order == "sample":
        return sorted(random.Random(o.seed + r).sample(range(pool), n))
    per_pass = pool // n
    passes, slot = divmod(r - 1, per_pass)
    order = random.Random(f"{o.seed}-pass-{passes}").sample(range(pool), pool)
    return sorted(order[slot * n : (slot + 1) * n])


def mixed_in(context: RoundContext, r: int, n_new: int) -> list[TokenizedPair]:
    """Earlier rounds' pairs (replay_ratio per new pair) and offline pairs (offline_ratio per new pair)."""
    o = context.cfg.online
    rng = random.Random(o.seed * 7 + r)
    extra: list[TokenizedPair] = []
    if o.replay_ratio > 0 and r > 1:
        earlier = [p for k in range(1, r) for p in context.store.pairs(k)]
        extra += rng.sample(earlier, min(len(earlier), round(o.replay_ratio * n_new)))
    if o.offline_ratio > 0:
        pool = context.inputs.offline_pairs
        extra += rng.sample(pool, min(len(pool), round(o.offline_ratio * n_new)))
    return extra


def shuffle_seed(cfg: RunConfig, r: int) -> int:
    """Round r's epoch shuffle (the reference scores the pairs in the first epoch's micro-batches)."""
    return cfg.data.shuffle_seed + 1000 * r


def evaluates(cfg: RunConfig, r: int) -> bool:
    """Whether round r ends with a held-out evaluation: every online.eval_every rounds, and after the last."""
    return r % cfg.online.eval_every == 0 or r == cfg.online.rounds


def each_round(cfg: RunConfig) -> bool:
    """Whether each round's reference is the policy as the round begins (else the starting reference, frozen)."""
    return cfg.online.reference_update == "each_round"


def adapter_base(cfg: RunConfig, policy: PolicyGroup) -> PolicyGroup | None:
    """The policy group when the reference is its base model with the LoRA adapter disabled."""
    return policy if cfg.model.lora.enabled else None


def evaluate(context: RoundContext, r: int = 0, round_reference: bool = False) -> dict[str, float]:
    """On the held-out prompts (same seeds every round): mean reward sampled as in training and greedy (the task's
    reward, also in a judged run), mean sampled length, the KL to the starting reference on the sampled responses
    (with round_reference, also to the round's own: the policy's snapshot at the round's start), and with a held-out
    judge the greedy answers' win rate against the baseline's."""
    cfg, groups, prompts = context.cfg, context.groups, context.inputs.eval_prompts
    o = cfg.online
    if not prompts:
        return {}
    seeds = [stats.sample_seed(o.seed, 0, i) for i in range(len(prompts))]
    draws = [Draw(o.eval_samples_per_prompt, o.temperature, o.top_p, o.max_tokens, context.uses_reference)]
    if groups.reward is not None or groups.eval_judge is not None:
        draws.append(Draw(1, 0.0, 1.0, o.max_tokens))  # greedy answers, decoded with the samples
    sampled, *greedy_draw = groups.rollout.draw(prompts, seeds, draws)
    greedy = greedy_draw[0] if greedy_draw else None
    metrics, kl = {}, {}
    if context.uses_reference:  # sent first: a reference group scores them while the rewards are computed
        pairs, scored = stats.kl_pairs(context.eval_prompt_ids, sampled)
        references = {"eval/kl": (adapter_base(cfg, groups.policy), START)}
        if round_reference:
            references["eval/kl_to_round_reference"] = (groups.policy, ROUND_START)
        for name, (scorer, weights) in references.items():
            kl[name] = ([], [])
            if pairs:
                batches = eval_groups(cfg, len(pairs))
                kl[name] = groups.reference.logps(pairs, batches, scorer, groups.mixes, weights, stream=True)[0]
    if groups.reward is not None:  # a judged run without a task reward has no absolute score to report
        scores = groups.reward.score([*prompts, *prompts], stats.texts(sampled) + stats.texts(greedy))
        metrics["eval/sampled_reward"] = stats.mean_score(scores[: len(prompts)])
        metrics["eval/greedy_reward"] = stats.mean_score(scores[len(prompts) :])
    metrics["eval/length"] = stats.mean_length(sampled)
    for name, (chosen, rejected) in kl.items():
        metrics[name] = stats.kl_estimate(scored, chosen[:], rejected[:])
    if groups.eval_judge is not None:
        metrics.update(judged_win_rate(context, r, [texts[0] for texts in stats.texts(greedy)]))
    return metrics


def judged_win_rate(context: RoundContext, r: int, answers: list[str]) -> dict[str, float]:
    """The held-out judge's verdicts on the answers against the baseline's, both orders: eval.reference_answers, or
    the starting policy's own (none at round 0, which draws and keeps them)."""
    prompts, baseline = context.inputs.eval_prompts, context.inputs.eval_baseline
    if baseline is None:
        if r == 0:
            context.store.save_eval_baseline(prompts, answers)
            return {}
        baseline = context.store.eval_baseline()
    tallies = context.groups.eval_judge.tournament(prompts, [[a, b] for a, b in zip(answers, baseline, strict=True)])
    return win_rate(tallies, answers, baseline).metrics()


def _response(prompt: Text, text: str):
    """A sampled text in the prompt's format: an assistant message for conversations."""
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text
