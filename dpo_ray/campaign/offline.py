"""Offline DPO: pairs -> cached reference log-probs -> ZeRO-3 policy steps -> metrics, checkpoints, an HF model."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_text
from ..data.pair_stats import pair_statistics
from ..groups.policy_group import PolicyGroup
from ..groups.reference_mix import ReferenceMix
from ..objective import needs_reference
from ..planning.plan import PlanModels
from ..run_files import DATA_STATS
from ..schema import Resume, RunConfig
from ..sizing.resources import group_needs, groups_live_together, reference_group_needed
from ..validation import validate
from ..workers.device import run_environment
from .checkpoints import CheckpointStore, keep_written_stage
from .fingerprint import check_resumable, items_digest, run_fingerprint
from .inputs import OfflineInputs, offline_inputs
from .metrics import MetricsWriter
from .reference import ReferenceScorer
from .run_lock import run_dir_lock
from .run_record import RunPlan, claim, finish
from .runtime import PlanCheck, absolute_dirs, record_attempt, run_campaign
from .trainer import PolicyTrainer, accumulation_steps, epoch_groups, eval_groups

log = logging.getLogger(__name__)


@dataclass
class OfflineResult:
    run_dir: Path
    final_model: Path
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    reference_computed: bool = False  # whether reference log-probs were computed (not cached, not reference-free)
    step_seconds: list[float] = field(default_factory=list)
    policy_nodes: list[str] = field(default_factory=list)  # Ray node id of each policy rank
    resumed_from: str | None = None  # the checkpoint the (last) attempt started from
    restarts: list[dict] = field(default_factory=list)  # one per recovery: what failed, and the seconds it cost


class OfflineCampaign:
    def __init__(self, cfg: RunConfig, inputs: OfflineInputs | None = None):
        self.cfg = absolute_dirs(validate(cfg))  # composed configs are valid already; one built in Python is checked
        self.inputs = inputs or offline_inputs(cfg)
        self.uses_reference = needs_reference(cfg.algo)
        self.run_dir = Path(cfg.output_dir).expanduser()
        self.spec, self.env = run_environment(cfg.cluster, cfg.model.dtype)
        self.reference = ReferenceScorer(cfg, self.inputs.reference_path, self.spec, self.env)
        self.checkpoints = CheckpointStore(self.run_dir / "checkpoints", cfg.train.keep_checkpoints)
        self.policy: PolicyGroup | None = None  # the live policy group, while one runs
        t = cfg.train
        self.steps_per_epoch = math.ceil(len(self.inputs.train) / t.batch_size)
        self.total_steps = self.steps_per_epoch * t.epochs if t.max_steps < 0 else t.max_steps
        data = items_digest([*self.inputs.train, *self.inputs.eval])
        i = self.inputs
        self.fingerprint = run_fingerprint(cfg, i.model_path, i.reference_path, data, self.total_steps)

    def run(self) -> OfflineResult:
        # A reference group finishes before the policy group starts: they need not fit together.
        needs = group_needs(self.cfg, reference_group_needed(self.cfg, online=False), online=False)
        check = PlanCheck("train", PlanModels(self.inputs.model_path, self.inputs.reference_path))
        together = groups_live_together(self.cfg, online=False)
        with run_dir_lock(self.run_dir):
            latest = self.checkpoints.latest(hasher=None)
            if self.cfg.resume == Resume.auto:  # before Ray: another run's checkpoint stops this one here
                check_resumable(latest, self.fingerprint, str(self.run_dir))
                keep_written_stage(self.cfg, latest)
            claim(
                self.run_dir,
                RunPlan("train", self.fingerprint, self.total_steps, "steps"),
                self.cfg.resume,
                bool(latest),
            )
            result, restarts = run_campaign(
                self.cfg, needs, self._run, check, concurrent=together, cleanup=self.reference.shutdown
            )
            finish(self.run_dir)
        result.restarts = restarts
        return result

    def _run(self, resume: bool, cause: str = "start") -> OfflineResult:
        cfg, inputs = self.cfg, self.inputs
        everything, n_train, groups = inputs.train + inputs.eval, len(inputs.train), self.reference_groups()
        result = OfflineResult(self.run_dir, self.run_dir / "final")
        reference, by_group, moving = None, reference_group_needed(cfg, online=False), cfg.algo.sync_ref_model
        if by_group:
            reference, result.reference_computed = self.reference.logps(everything, groups)
            if moving:
                self.reference.start()  # a cache hit started none; TR-DPO mixes into it and scores with it
            else:
                self.reference.shutdown()  # the frozen reference is needed only once
        policy = self.policy = PolicyGroup(cfg, inputs.model_path, self.total_steps, accumulation_steps(cfg), self.env)
        state = self.checkpoints.latest(policy.hash_files) if resume else None  # the ranks hash its shards
        record_attempt(self.run_dir, state["tag"] if state else None, cause)
        result.resumed_from = state["tag"] if state else None
        result.policy_nodes = policy.group.node_ids()
        log.info("policy ranks on %d node(s): %s", len(set(result.policy_nodes)), result.policy_nodes)
        try:
            mix = ReferenceMix(cfg, policy, self.reference.group) if moving else None
            if self.uses_reference and not by_group:  # before any checkpoint loads: the policy is still the reference
                reference, result.reference_computed = self.reference.logps(everything, groups, policy)
            train_ref = None if reference is None else (reference[0][:n_train], reference[1][:n_train])
            eval_ref = None if reference is None else (reference[0][n_train:], reference[1][n_train:])
            self._write_data_stats(eval_ref)
            if state:
                log.info("resuming from checkpoint %s (step %d)", state["tag"], state["step"])
                self.checkpoints.load(policy, state)
                if state.get("reference_mixes"):
                    mix.load(self.checkpoints.directory(state), state["reference_mixes"])
            self._train(policy, train_ref, eval_ref, result, state, mix)
            policy.save_pretrained(str(result.final_model))
        finally:
            self.policy = None
            policy.shutdown()
            if moving:
                self.reference.shutdown()  # a restart starts both groups afresh
        return result

    def reference_groups(self) -> list[list[int]]:
        """The micro-batches the reference scores the train + eval pairs in: each the one the policy first sees it in
        (its first epoch's, and the evaluations')."""
        n_train = len(self.inputs.train)
        groups = epoch_groups(self.cfg, n_train, self.cfg.data.shuffle_seed)
        return groups + [[n_train + i for i in group] for group in eval_groups(self.cfg, len(self.inputs.eval))]

    def _write_data_stats(self, eval_ref) -> None:
        """Statistics of the pairs for the monitors (length bias, near-identical pairs, label noise); KTO's examples
        are no pairs (their second completion is another example's): none."""
        if self.inputs.train and self.inputs.train[0].label is not None:
            return
        ratio = self.cfg.monitor.near_identical_ratio
        stats = {
            "train": pair_statistics(self.inputs.train, ratio),
            "eval": pair_statistics(self.inputs.eval, ratio, eval_ref),
        }
        write_text(self.run_dir / DATA_STATS, json.dumps(stats, indent=2))

    def _train(self, policy: PolicyGroup, train_ref, eval_ref, result: OfflineResult, state: dict | None, mix) -> None:
        writer = MetricsWriter(self.run_dir, self.cfg, state["step"] if state else None)
        step, tokens = (state["step"], state.get("num_tokens", 0)) if state else (0, 0)
        trainer = PolicyTrainer(
            self.cfg, policy, writer, self.checkpoints, self.total_steps, step, num_tokens=tokens, reference_mix=mix
        )
        try:
            result.before = state["before"] if state else trainer.evaluate(self.inputs.eval, eval_ref)
            trainer.checkpoint_state = {"before": result.before, "fingerprint": self.fingerprint}
            trainer.train(
                self.inputs.train,
                train_ref,
                math.ceil(self.total_steps / self.steps_per_epoch),
                self.cfg.data.shuffle_seed,
                self.inputs.eval,
                eval_ref,
                skip_batches=step,
            )
            result.after = trainer.evaluate(self.inputs.eval, eval_ref)
            result.step_seconds = trainer.step_seconds
        finally:
            trainer.close()
            writer.close()
