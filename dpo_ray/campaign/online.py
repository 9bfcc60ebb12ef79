"""Online / iterative DPO: each round the vLLM engines sample n responses per prompt from the current policy, the
reward group scores them (or a pairwise judge plays them against each other), best vs worst become pairs (for KTO:
labelled examples), the policy trains on them against the frozen reference, and its new weights are pushed into the
engines. A campaign restarts from its last finished round."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import Resume, RunConfig
from ..data.examples import build_examples
from ..data.formats import Text
from ..data.pair_stats import example_statistics, pair_statistics
from ..data.pairs import build_pairs
from ..data.tokenize import TokenizedPair, TokenizeSettings, encode_prompt
from ..data.tournament import judge_statistics
from ..groups.judge_group import JudgeGroup, judge_max_model_len
from ..groups.policy_group import PolicyGroup
from ..groups.reference_mix import ReferenceMix
from ..groups.resources import group_needs, judged, reference_group_needed, reward_group_needed, uses_reward_model
from ..groups.reward_group import RewardGroup
from ..groups.rollout_group import RolloutGroup
from ..groups.weight_sync import WeightSync
from ..loss_types import is_unpaired
from ..objective import needs_reference
from ..plan.plan import PlanModels
from ..report import round_monitors
from ..validation import validate
from ..workers.device import run_environment
from ..workers.model_shape import model_shape
from ..workers.models import load_tokenizer
from . import round_stats as stats
from .checkpoints import CheckpointStore
from .fingerprint import check_resumable, items_digest, run_fingerprint
from .group_start import start_together
from .inputs import OnlineInputs, online_inputs
from .metrics import MetricsWriter
from .reference import ReferenceScorer
from .round_store import RoundStore
from .rounds_ahead import RoundsAhead
from .run_lock import run_dir_lock
from .run_record import RunPlan, claim, finish
from .runtime import PlanCheck, absolute_dirs, record_attempt, run_campaign
from .trainer import PolicyTrainer, accumulation_steps, epoch_groups, eval_groups

log = logging.getLogger(__name__)
PHASES = ("generate", "score", "pairs", "reference", "train", "wait", "sync", "eval")
TRAIN_KEYS = ("rewards/margins", "rewards/accuracies", "loss")  # the round's last training step, kept in its row


@dataclass
class OnlineResult:
    run_dir: Path
    final_model: Path
    rounds: list[dict] = field(default_factory=list)  # one summary row per round; row 0 is the starting policy
    resumed_from: int = 0  # the last finished round found on disk (0: a fresh start)
    restarts: list[dict] = field(default_factory=list)  # one per recovery from a lost actor or a hung call


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

    @property
    def mixes(self) -> int:
        """How many times TR-DPO has mixed the policy into the reference so far."""
        return self.mix.mixes if self.mix is not None else 0


class OnlineCampaign:
    def __init__(self, cfg: RunConfig, inputs: OnlineInputs | None = None):
        # composed configs are valid already; one built in Python is checked here
        self.cfg, o = absolute_dirs(validate(cfg)), cfg.online
        self.inputs = inputs or online_inputs(cfg)
        self.uses_reference = needs_reference(cfg.algo)
        self.unpaired = is_unpaired(cfg.algo.loss_type)  # online KTO: each round's samples become labelled examples
        self.run_dir = Path(cfg.output_dir).expanduser()
        self.spec, self.env = run_environment(cfg.cluster, cfg.model.dtype)
        self.tokenizer = load_tokenizer(self.inputs.model_path, cfg.model.trust_remote_code)
        # Each prompt as the engines are given it, encoded once: engine sizing, every round's pairs, the KL estimate.
        self.prompt_ids = encoded(self.tokenizer, self.inputs.prompts)
        self.eval_prompt_ids = encoded(self.tokenizer, self.inputs.eval_prompts)
        per_round = o.prompts_per_round or len(self.inputs.prompts)
        most_pairs = per_round * self.items_per_prompt() * (1 + o.replay_ratio + o.offline_ratio)
        # An upper bound for the learning-rate schedule: a round never yields more pairs than this.
        self.total_steps = o.rounds * o.epochs_per_round * math.ceil(most_pairs / cfg.train.batch_size)
        i = self.inputs
        prompts = items_digest([*i.prompts, *i.eval_prompts, *i.offline_pairs])
        self.fingerprint = run_fingerprint(cfg, i.model_path, i.reference_path, prompts, self.total_steps)
        # more rounds, other evaluations or checkpoints continue the same campaign
        same = ("rounds", "eval_every", "eval_samples_per_prompt", "checkpoint_every")
        shaping = {k: v for k, v in asdict(o).items() if k not in same}
        self.fingerprint["online"] = json.loads(json.dumps(shaping, default=str))
        self.fingerprint["reward"] = {"fn": i.reward_fn or cfg.reward.fn, "model": i.reward_model}
        if judged(cfg):  # a judged campaign does not resume another's rounds (runs before judges keep their print)
            r = cfg.reward
            self.fingerprint["judge"] = {"model": i.judge_model, "fn": r.judge_fn, "template": r.judge_template}
        self.rollout: RolloutGroup | None = None  # the live rollout group, while one runs
        settings = TokenizeSettings.of(cfg.data)
        self.store = RoundStore(self.run_dir, cfg.train.keep_checkpoints, settings, o.checkpoint_every, o.rounds)

    def run(self) -> OnlineResult:
        with run_dir_lock(self.run_dir):
            latest = self.store.finished(hasher=None)
            if self.cfg.resume == Resume.auto:  # before Ray: another run's round checkpoint stops this one here
                check_resumable(latest, self.fingerprint, str(self.run_dir))
            plan = RunPlan("online", self.fingerprint, self.cfg.online.rounds, "rounds")
            claim(self.run_dir, plan, self.cfg.resume, bool(latest))
            result = self._campaign()
            finish(self.run_dir)
        return result

    def _campaign(self) -> OnlineResult:
        needs = group_needs(self.cfg, reference_group_needed(self.cfg, online=True), online=True)
        i = self.inputs
        reward = i.reward_model if uses_reward_model(self.cfg) else ""
        models = PlanModels(i.model_path, i.reference_path, reward, i.judge_model)
        check = PlanCheck("online", models, self.engine_length())
        result, restarts = run_campaign(self.cfg, needs, self._run, check)
        result.restarts = restarts
        return result

    def _run(self, resume: bool, cause: str = "start") -> OnlineResult:
        cfg, started = self.cfg, []
        self.began = time.perf_counter()  # the round rows' timelines count from here
        try:
            groups = self._start_groups(started)
            state = self.store.finished(groups.policy.hash_files) if resume else None  # the ranks hash its shards
            record_attempt(self.run_dir, state["tag"] if state else None, cause)
            if state and state["round"] >= cfg.online.rounds:
                log.info("%s: all %d rounds already finished; running none", self.run_dir, cfg.online.rounds)
            result = OnlineResult(self.run_dir, self.run_dir / "final", resumed_from=state["round"] if state else 0)
            staleness = cfg.online.max_staleness if cfg.online.async_rounds else 0
            saved = RoundsAhead.load(self.store.directory(state)) if state else None
            ahead = RoundsAhead(staleness, cfg.online.rounds, saved)
            self.engine_version = state["round"] if state else 0  # the policy version (rounds trained) in the engines
            writer = MetricsWriter(self.run_dir, self.cfg, state["step"] if state else None)
            checkpoints = CheckpointStore(self.run_dir / "checkpoints", cfg.train.keep_checkpoints)
            trainer = PolicyTrainer(
                cfg,
                groups.policy,
                writer,
                checkpoints,
                self.total_steps,
                state["step"] if state else 0,
                num_tokens=(state or {}).get("num_tokens", 0),
                reference_mix=groups.mix,
            )
            try:
                if state:
                    log.info("resuming after round %d (step %d) from %s", state["round"], state["step"], self.run_dir)
                    self.store.load(groups.policy, state)
                    if state.get("reference_mixes"):
                        groups.mix.load(self.store.directory(state), state["reference_mixes"])
                    groups.sync()
                    result.rounds = state["rows"]
                else:
                    result.rounds = [{"round": 0, **self._evaluate(groups)}]
                for r in range(result.resumed_from + 1, cfg.online.rounds + 1):
                    row = self._round(r, groups, trainer, ahead)
                    result.rounds.append(row)
                    monitors, tripped = round_monitors(result.rounds, cfg.monitor)
                    row.update(monitors)
                    for warning in tripped:
                        log.warning("round %d: monitor: %s", r, warning)
                    writer.write(trainer.step, {k: v for k, v in row.items() if isinstance(v, (int, float))})
                    finished = {**trainer.resume_state(), "fingerprint": self.fingerprint}
                    self.store.finish(r, groups.policy, result.rounds, finished, also(trainer.save_also, ahead.save))
                groups.policy.save_pretrained(str(result.final_model))
            finally:
                trainer.close()
                writer.close()
        finally:
            for group in reversed(started):
                group.shutdown()
        return result

    def items_per_prompt(self) -> int:
        """The most training items one prompt yields a round: pairs, or KTO's examples (two a pair, or every sample)."""
        o = self.cfg.online
        if not self.unpaired:
            return o.max_pairs_per_prompt
        return o.samples_per_prompt if o.desirable_threshold is not None else 2 * o.max_pairs_per_prompt

    def engine_length(self) -> int:
        """The longest prompt + response the engines will hold."""
        return max(map(len, [*self.prompt_ids, *self.eval_prompt_ids]), default=0) + self.cfg.online.max_tokens

    def judge_length(self) -> int:
        """The longest judge prompt + verdict a judge model's engines will hold (0: a judge function, no engine)."""
        if not self.inputs.judge_model:
            return 0
        positions = model_shape(self.inputs.judge_model, self.cfg.model.trust_remote_code).max_positions
        return judge_max_model_len(self.engine_length(), positions)

    def _start_groups(self, started: list) -> Groups:
        """Every group, reserved one after another in start order (where the plan places them), then started
        together: their processes import and load at once (a vLLM engine, the reference and the policy each take
        seconds here and minutes at 70B). Each group goes into started once it exists, so a failure shuts down the
        others."""
        cfg, inputs, began = self.cfg, self.inputs, time.perf_counter()
        reference = ReferenceScorer(cfg, inputs.reference_path, self.spec, self.env)
        started.append(reference)
        makers = {"rollout": lambda at: RolloutGroup(cfg, inputs.model_path, self.engine_length(), at)}
        if reward_group_needed(cfg):
            makers["reward"] = lambda at: RewardGroup(cfg, inputs.reward_fn, inputs.reward_model, at)
        if judged(cfg):
            makers["judge"] = lambda at: JudgeGroup(cfg, inputs.judge_model, self.judge_length(), at)
        if reference_group_needed(cfg, online=True):  # every round needs it
            makers["reference"] = reference.start
        makers["policy"] = lambda at: PolicyGroup(
            cfg, inputs.model_path, self.total_steps, accumulation_steps(cfg), self.env, at
        )
        needs = group_needs(cfg, "reference" in makers, online=True)
        groups = start_together(makers, needs, str(cfg.cluster.placement), started)
        rollout, policy = groups["rollout"], groups["policy"]
        self.rollout = rollout
        sync = WeightSync(cfg, policy, rollout)
        mix = ReferenceMix(cfg, policy, reference.group) if cfg.algo.sync_ref_model else None
        log.info("%d groups started together in %.1fs", len(makers), time.perf_counter() - began)
        return Groups(rollout, groups.get("reward"), groups.get("judge"), reference, policy, sync, mix)

    def _round(self, r: int, groups: Groups, trainer: PolicyTrainer, ahead: RoundsAhead) -> dict:
        """Generate (or take the samples drawn ahead), score, pair, score the reference, train, sync the engines,
        evaluate: one round's summary row."""
        o, seconds, timeline = self.cfg.online, {}, []
        began = clock = time.perf_counter()

        def lap(phase: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[phase], clock = now - clock, now
            timeline.append([phase, clock - seconds[phase] - self.began, clock - self.began])
            log.info("round %d/%d: %s done in %.1fs", r, o.rounds, phase, seconds[phase])

        ahead.launch(r, self.engine_version, lambda k: self._submit_round(k, groups))
        drawn_round = ahead.take(r)
        drawn, version = drawn_round.samples, drawn_round.version
        indices = self._round_prompts(r)
        prompts = [self.inputs.prompts[i] for i in indices]
        samples = stats.texts(drawn)
        lap("generate")
        if drawn_round.launched_at is not None:  # the engines' own span (drawn ahead: it overlaps earlier phases)
            timeline.append(["draw", drawn_round.launched_at - self.began, drawn_round.finished_at - self.began])
        beats, judging = None, {}
        if groups.judge is not None:  # a sample's score: the comparisons it won with both orders agreeing
            tallies = groups.judge.tournament(prompts, samples)
            rewards, beats, judging = [t.wins for t in tallies], [t.beats for t in tallies], judge_statistics(tallies)
        else:
            rewards = groups.reward.score(prompts, samples)
        lap("score")
        responses = [[_response(prompt, s) for s in outs] for prompt, outs in zip(prompts, samples)]
        prompt_ids = [self.prompt_ids[i] for i in indices]
        response_ids = [[list(s.token_ids) for s in outs] for outs in drawn]
        token_ids = (prompt_ids, response_ids)
        if self.unpaired:
            pair_rows = build_examples(
                prompts,
                responses,
                rewards,
                token_ids,
                o.desirable_threshold,
                o.min_margin,
                o.max_pairs_per_prompt,
                beats,
            )
        else:
            pair_rows = build_pairs(prompts, responses, rewards, o.min_margin, o.max_pairs_per_prompt, token_ids, beats)
        sample_rows = [
            {"prompt": p, "responses": s, "rewards": w, "response_ids": ids, "policy_version": version}
            for p, s, w, ids in zip(prompts, samples, rewards, response_ids)
        ]
        self.store.save(r, sample_rows, pair_rows)
        new_pairs = self.store.pairs(r)
        train_pairs = new_pairs + self._mixed_in(r, len(new_pairs))
        lap("pairs")
        ref, shuffle_seed = None, self.cfg.data.shuffle_seed + 1000 * r
        if self.uses_reference and train_pairs:
            batches = epoch_groups(self.cfg, len(train_pairs), shuffle_seed)  # as the policy will see them first
            ref, _ = groups.reference.logps(train_pairs, batches, self._adapter_base(groups.policy), groups.mixes)
        lap("reference")
        steps_before, mixes = trainer.step, groups.mixes
        if train_pairs:
            trainer.train(train_pairs, ref, o.epochs_per_round, shuffle_seed, reference_mixes=mixes)
        else:
            log.warning("round %d: no pairs (every prompt's samples tied); the policy is unchanged", r)
        lap("train")
        ahead.settle()  # the engines finish the rounds drawn ahead before they take new weights
        lap("wait")
        if train_pairs:
            groups.sync()
        self.engine_version = r
        lap("sync")
        evaluation = self._evaluate(groups) if self._evaluates(r) else {}
        lap("eval")
        new_ref = None if ref is None else (ref[0][: len(new_pairs)], ref[1][: len(new_pairs)])
        labelled_one_by_one = self.unpaired and o.desirable_threshold is not None
        row = {
            "round": r,
            "prompts": len(prompts),
            "policy_version": version,  # rounds trained when the samples were drawn: r - 1, less when drawn ahead
            **stats.sample_statistics(drawn, rewards, None if labelled_one_by_one else o.min_margin),
            **judging,
            "pairs": len(new_pairs),
            "train_pairs": len(train_pairs),
            "steps": trainer.step - steps_before,
            **(
                example_statistics(new_pairs)
                if self.unpaired
                else pair_statistics(new_pairs, self.cfg.monitor.near_identical_ratio, new_ref)
            ),
            **{f"train/{k}": trainer.last_metrics[k] for k in TRAIN_KEYS if k in trainer.last_metrics},
            **evaluation,
            **{f"time/{k}": seconds[k] for k in PHASES},
            "time/round": time.perf_counter() - began,
            "timeline": timeline,  # [phase, start s, end s] from the attempt's start; "draw": the engines' span
        }
        log.info("round %d: %s", r, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
        return row

    def _submit_round(self, r: int, groups: Groups):
        """Round r's generation, started and not waited for: n samples per prompt, seeded by round and prompt."""
        o, indices = self.cfg.online, self._round_prompts(r)
        log.info("round %d/%d: generating %d prompts x %d samples", r, o.rounds, len(indices), o.samples_per_prompt)
        prompts = [self.inputs.prompts[i] for i in indices]
        seeds = [stats.sample_seed(o.seed, r, i) for i in indices]
        n, temperature, top_p = o.samples_per_prompt, o.temperature, o.top_p
        return groups.rollout.submit_generate(prompts, seeds, n, temperature, top_p, o.max_tokens)

    def _round_prompts(self, r: int) -> list[int]:
        n, pool = self.cfg.online.prompts_per_round, len(self.inputs.prompts)
        if not n or n >= pool:
            return list(range(pool))
        return sorted(random.Random(self.cfg.online.seed + r).sample(range(pool), n))

    def _mixed_in(self, r: int, n_new: int) -> list[TokenizedPair]:
        """Earlier rounds' pairs (replay_ratio per new pair) and offline pairs (offline_ratio per new pair)."""
        o, rng = self.cfg.online, random.Random(self.cfg.online.seed * 7 + r)
        extra: list[TokenizedPair] = []
        if o.replay_ratio > 0 and r > 1:
            earlier = [p for k in range(1, r) for p in self.store.pairs(k)]
            extra += rng.sample(earlier, min(len(earlier), round(o.replay_ratio * n_new)))
        if o.offline_ratio > 0:
            pool = self.inputs.offline_pairs
            extra += rng.sample(pool, min(len(pool), round(o.offline_ratio * n_new)))
        return extra

    def _evaluates(self, r: int) -> bool:
        """Whether round r ends with a held-out evaluation: every online.eval_every rounds, and after the last."""
        return r % self.cfg.online.eval_every == 0 or r == self.cfg.online.rounds

    def _adapter_base(self, policy: PolicyGroup) -> PolicyGroup | None:
        """The policy group when the reference is its base model with the LoRA adapter disabled."""
        return policy if self.cfg.model.lora.enabled else None

    def _evaluate(self, groups: Groups) -> dict[str, float]:
        """On the held-out prompts (same seeds every round): mean reward sampled as in training and greedy (the task's
        reward, also in a judged run), mean sampled length, and the KL to the reference on the sampled responses."""
        o, prompts = self.cfg.online, self.inputs.eval_prompts
        if not prompts:
            return {}
        seeds = [stats.sample_seed(o.seed, 0, i) for i in range(len(prompts))]
        sampled = groups.rollout.generate(
            prompts,
            seeds,
            o.eval_samples_per_prompt,
            o.temperature,
            o.top_p,
            o.max_tokens,
            with_logp=self.uses_reference,
        )
        metrics = {}
        if groups.reward is not None:  # a judged run without a task reward has no absolute score to report
            greedy = groups.rollout.generate(prompts, seeds, 1, 0.0, 1.0, o.max_tokens)
            metrics["eval/sampled_reward"] = stats.mean_score(groups.reward.score(prompts, stats.texts(sampled)))
            metrics["eval/greedy_reward"] = stats.mean_score(groups.reward.score(prompts, stats.texts(greedy)))
        metrics["eval/length"] = stats.mean_length(sampled)
        if self.uses_reference:
            pairs, scored = stats.kl_pairs(self.eval_prompt_ids, sampled)
            chosen, rejected = [], []
            if pairs:
                batches = eval_groups(self.cfg, len(pairs))
                base = self._adapter_base(groups.policy)
                chosen, rejected = groups.reference.logps(pairs, batches, base, groups.mixes)[0]
            metrics["eval/kl"] = stats.kl_estimate(scored, chosen, rejected)
        return metrics


def also(*writers):
    """One callable that runs each of writers (those not None) on a checkpoint directory."""

    def write(directory: Path) -> None:
        for writer in writers:
            if writer is not None:
                writer(directory)

    return write


def encoded(tokenizer, prompts: list[Text]) -> list[tuple[int, ...]]:
    """Each prompt's token ids, rendered as the engines render it."""
    return [tuple(encode_prompt(tokenizer, p, isinstance(p, list))) for p in prompts]


def _response(prompt: Text, text: str):
    """A sampled text in the prompt's format: an assistant message for conversations."""
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text
