"""Online / iterative DPO: each round the vLLM engines sample n responses per prompt from the current policy, the
reward group scores them (or a pairwise judge plays them against each other), best vs worst become pairs (for KTO:
labelled examples), the policy trains on them against the frozen reference, and its new weights are pushed into the
engines. A campaign restarts from its last finished round. A round is a sequence of phases (round_phases.py), each
testable without Ray."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..data.formats import Text
from ..data.tokenize import TokenizeSettings, encode_prompt
from ..groups.judge_group import JudgeGroup, SelfJudge
from ..groups.policy_group import PolicyGroup
from ..groups.reference_mix import ReferenceMix
from ..groups.reward_group import RewardGroup
from ..groups.rollout_group import RolloutGroup
from ..groups.weight_sync import WeightSync
from ..losses.registry import is_unpaired
from ..objective import needs_reference
from ..planning.plan import PlanModels
from ..report import round_monitors
from ..reward_source import RewardKind, eval_judge_config, eval_judge_group_needed
from ..schema import Resume, RunConfig
from ..sizing.judge_length import judge_max_model_len
from ..sizing.model_shape import model_shape
from ..sizing.resources import group_needs, reference_group_needed
from ..validation import validate
from ..workers.device import run_environment
from ..workers.models import load_tokenizer
from .checkpoints import CheckpointStore, keep_written_stage
from .fingerprint import check_resumable, items_digest, online_fingerprint, run_fingerprint
from .group_start import start_together
from .inputs import OnlineInputs, online_inputs
from .metrics import MetricsWriter
from .reference import ReferenceScorer
from .round_phases import Groups, RoundContext, evaluate, run_round
from .round_store import RoundStore
from .rounds_ahead import RoundsAhead
from .run_lock import run_dir_lock
from .run_record import RunPlan, claim, finish
from .runtime import PlanCheck, absolute_dirs, record_attempt, run_campaign
from .trainer import PolicyTrainer, accumulation_steps

log = logging.getLogger(__name__)


@dataclass
class OnlineResult:
    run_dir: Path
    final_model: Path
    rounds: list[dict] = field(default_factory=list)  # one summary row per round; row 0 is the starting policy
    resumed_from: int = 0  # the last finished round found on disk (0: a fresh start)
    restarts: list[dict] = field(default_factory=list)  # one per recovery from a lost actor or a hung call


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
        self.fingerprint["online"] = online_fingerprint(o)
        self.fingerprint.update(i.reward.fingerprint(cfg.reward.judge_template))
        self.rollout: RolloutGroup | None = None  # the live rollout group, while one runs
        settings = TokenizeSettings.of(cfg.data)
        self.store = RoundStore(self.run_dir, cfg.train.keep_checkpoints, settings, o.checkpoint_every, o.rounds)

    def run(self) -> OnlineResult:
        with run_dir_lock(self.run_dir):
            latest = self.store.finished(hasher=None)
            if self.cfg.resume == Resume.auto:  # before Ray: another run's round checkpoint stops this one here
                check_resumable(latest, self.fingerprint, str(self.run_dir))
                keep_written_stage(self.cfg, latest)
            plan = RunPlan("online", self.fingerprint, self.cfg.online.rounds, "rounds")
            claim(self.run_dir, plan, self.cfg.resume, bool(latest))
            result = self._campaign()
            finish(self.run_dir)
        return result

    def _campaign(self) -> OnlineResult:
        needs = group_needs(self.cfg, reference_group_needed(self.cfg, online=True), online=True)
        i = self.inputs
        eval_judge = i.eval_judge.judge_model if i.eval_judge is not None else ""
        models = PlanModels(i.model_path, i.reference_path, i.reward.reward_model, i.reward.judge_model, eval_judge)
        check = PlanCheck("online", models, self.engine_length())
        result, restarts = run_campaign(self.cfg, needs, self._run, check)
        result.restarts = restarts
        return result

    def _run(self, resume: bool, cause: str = "start") -> OnlineResult:
        cfg, started = self.cfg, []
        began = time.perf_counter()  # the round rows' timelines count from here
        try:
            groups = self._start_groups(started)
            state = self.store.finished(groups.policy.hash_files) if resume else None  # the ranks hash its shards
            record_attempt(self.run_dir, state["tag"] if state else None, cause)
            if state and state["round"] >= cfg.online.rounds:
                log.info("%s: all %d rounds already finished; running none", self.run_dir, cfg.online.rounds)
            result = OnlineResult(self.run_dir, self.run_dir / "final", resumed_from=state["round"] if state else 0)
            staleness = cfg.online.max_staleness if cfg.online.async_rounds else 0
            done = state["round"] if state else 0
            # the next round's samples when an attempt drew them from these very weights and stopped before finishing
            saved = self.store.kept_draw(done + 1, done) if resume else {}
            if saved:
                log.info("round %d: taking the samples an earlier attempt drew from the same weights", done + 1)
            saved.update(RoundsAhead.load(self.store.directory(state)) if state else {})
            ahead = RoundsAhead(staleness, cfg.online.rounds, saved)
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
            rounds = RoundContext(
                cfg=cfg,
                inputs=self.inputs,
                prompt_ids=self.prompt_ids,
                eval_prompt_ids=self.eval_prompt_ids,
                uses_reference=self.uses_reference,
                unpaired=self.unpaired,
                store=self.store,
                groups=groups,
                trainer=trainer,
                ahead=ahead,
                began=began,
                engine_version=done,
            )
            try:
                if state:
                    log.info("resuming after round %d (step %d) from %s", state["round"], state["step"], self.run_dir)
                    self.store.check_finished(state)
                    self.store.load(groups.policy, state)
                    if state.get("reference_mixes"):
                        groups.mix.load(self.store.directory(state), state["reference_mixes"])
                    groups.sync()
                    result.rounds = state["rows"]
                else:
                    result.rounds = [{"round": 0, **evaluate(rounds)}]
                for r in range(result.resumed_from + 1, cfg.online.rounds + 1):
                    row = run_round(rounds, r)
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

    def sample_length(self) -> int:
        """The longest prompt + response a round draws."""
        return max(map(len, [*self.prompt_ids, *self.eval_prompt_ids]), default=0) + self.cfg.online.max_tokens

    def engine_length(self) -> int:
        """The longest sequence the rollout engines will hold: a sample, or a self-judging policy's judge prompt."""
        if self.inputs.reward.kind is not RewardKind.self_judge:
            return self.sample_length()
        return self.judge_length(self.inputs.model_path)

    def judge_length(self, judge: str) -> int:
        """The longest judge prompt + verdict the engines of judge (a model directory) will hold (0: a judge function,
        no engine)."""
        if not judge:
            return 0
        positions = model_shape(judge, self.cfg.model.trust_remote_code).max_positions
        return judge_max_model_len(self.sample_length(), positions)

    def _start_groups(self, started: list) -> Groups:
        """Every group, reserved one after another in start order (where the plan places them), then started
        together: their processes import and load at once (a vLLM engine, the reference and the policy each take
        seconds here and minutes at 70B). Each group goes into started once it exists, so a failure shuts down the
        others."""
        cfg, inputs, began = self.cfg, self.inputs, time.perf_counter()
        reference = ReferenceScorer(cfg, inputs.reference_path, self.spec, self.env)
        started.append(reference)
        makers = {"rollout": lambda at: RolloutGroup(cfg, inputs.model_path, self.engine_length(), at)}
        if inputs.reward.reward_group_needed:
            makers["reward"] = lambda at: RewardGroup(cfg, inputs.reward, at)
        if inputs.reward.judge_group_needed:
            makers["judge"] = lambda at: JudgeGroup(
                cfg, inputs.reward, self.judge_length(inputs.reward.judge_model), at
            )
        if eval_judge_group_needed(cfg):
            judged, source = eval_judge_config(cfg), inputs.eval_judge
            makers["eval_judge"] = lambda at: JudgeGroup(judged, source, self.judge_length(source.judge_model), at)
        if reference_group_needed(cfg, online=True):  # every round needs it
            makers["reference"] = reference.start
        makers["policy"] = lambda at: PolicyGroup(
            cfg, inputs.model_path, self.total_steps, accumulation_steps(cfg), self.env, at
        )
        needs = group_needs(cfg, "reference" in makers, online=True)
        reuse = frozenset(("rollout", "reference", "policy") if cfg.cluster.reuse_rank_processes else ())
        groups = start_together(makers, needs, str(cfg.cluster.placement), started, cfg.cluster.nodes_wait_s, reuse)
        rollout, policy = groups["rollout"], groups["policy"]
        self.rollout = rollout
        sync = WeightSync(cfg, policy, rollout)
        mix = ReferenceMix(cfg, policy, reference.group) if cfg.algo.sync_ref_model else None
        log.info("%d groups started together in %.1fs", len(makers), time.perf_counter() - began)
        judge = SelfJudge(cfg, rollout) if inputs.reward.kind is RewardKind.self_judge else groups.get("judge")
        eval_judge = groups.get("eval_judge") or (judge if inputs.eval_judge is not None else None)
        return Groups(rollout, groups.get("reward"), judge, reference, policy, sync, mix, eval_judge)


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
