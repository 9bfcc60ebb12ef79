"""Offline DPO: pairs -> cached reference log-probs -> ZeRO-3 policy steps -> metrics, checkpoints, an HF model."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import RunConfig
from ..data.dataset import load_pairs, split_eval
from ..data.pair_stats import pair_statistics
from ..data.tokenize import TokenizedPair, TokenizeSettings
from ..groups.policy_group import PolicyGroup
from ..groups.resources import group_needs
from ..objective import needs_reference
from ..report.records import DATA_STATS
from ..tasks.pretrained import PRETRAINED, ensure_pretrained
from ..workers.device import device_spec, rank_env, rank_threads
from ..workers.models import load_tokenizer
from .atomic import write_text
from .checkpoints import CheckpointStore, resume_mode
from .metrics import MetricsWriter
from .reference import ReferenceScorer
from .runtime import ensure_ray, with_restarts
from .trainer import PolicyTrainer

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    """What a run trains on, after the embedded task (if any) is built and the data are tokenised."""

    model_path: str
    reference_path: str
    train: list[TokenizedPair]
    eval: list[TokenizedPair]
    task: object | None = None


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


def prepare_inputs(cfg: RunConfig) -> Inputs:
    model_path, task = cfg.model.path, None
    train_files, eval_files = list(cfg.data.train_files), list(cfg.data.eval_files)
    if model_path == "embedded":
        from ..tasks.embedded import ensure_embedded_task

        task = ensure_embedded_task(cfg.task, cfg.cache_dir)
        model_path = str(task.model_dir)
        if not train_files:
            train_files, eval_files = [str(task.train_file)], eval_files or [str(task.eval_file)]
    elif model_path in PRETRAINED:
        model_path = ensure_pretrained(model_path, cfg.cache_dir)
    if not train_files:
        raise ValueError(
            "data.train_files is empty: name preference files, or use model.path=embedded for the built-in task"
        )
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    d = cfg.data
    settings = TokenizeSettings(d.chat_template, d.max_length, d.max_prompt_length, d.truncation_mode)
    train, report = load_pairs(train_files, tokenizer, settings, d.on_error)
    log.info("train data: %s", report.summary())
    if eval_files:
        evals, eval_report = load_pairs(eval_files, tokenizer, settings, d.on_error)
        log.info("eval data: %s", eval_report.summary())
    else:
        train, evals = split_eval(train, d.eval_fraction, d.shuffle_seed)
    return Inputs(model_path, cfg.model.reference_path or model_path, train, evals, task)


class OfflineCampaign:
    def __init__(self, cfg: RunConfig, inputs: Inputs | None = None):
        self.cfg = cfg
        self.uses_reference = needs_reference(cfg.algo)  # also validates the loss settings before any work
        self.inputs = inputs or prepare_inputs(cfg)
        self.run_dir = Path(cfg.output_dir).expanduser()
        self.spec = device_spec(cfg.cluster.gpus_per_rank, cfg.model.dtype)
        self.env = rank_env(self.spec, rank_threads(cfg.cluster.cpus_per_rank, cfg.cluster.torch_threads))
        self.reference = ReferenceScorer(cfg, self.inputs.reference_path, self.spec, self.env)
        self.checkpoints = CheckpointStore(self.run_dir / "checkpoints", cfg.train.keep_checkpoints)
        self.policy: PolicyGroup | None = None  # the live policy group, while one runs
        t = cfg.train
        self.accumulation = accumulation_steps(cfg)
        self.steps_per_epoch = math.ceil(len(self.inputs.train) / t.batch_size)
        self.total_steps = self.steps_per_epoch * t.epochs if t.max_steps < 0 else t.max_steps

    def run(self) -> OfflineResult:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.run_dir / "config.json", json.dumps(asdict(cfg), indent=2))
        lora = cfg.model.lora.enabled
        # Without LoRA the reference group finishes before the policy group starts: they need not fit together.
        started = ensure_ray(
            cfg.cluster, group_needs(cfg, self.uses_reference and not lora, online=False), concurrent=False
        )
        restarts: list[dict] = []
        try:
            result = with_restarts(self._run, resume_mode(cfg.resume), cfg.train.max_restarts, restarts)
            result.restarts = restarts
            return result
        finally:
            self.reference.shutdown()
            if started:
                import ray

                ray.shutdown()

    def _run(self, resume: bool) -> OfflineResult:
        cfg, inputs = self.cfg, self.inputs
        state = self.checkpoints.latest() if resume else None
        everything = inputs.train + inputs.eval
        lora = cfg.model.lora.enabled
        result = OfflineResult(self.run_dir, self.run_dir / "final", resumed_from=state["tag"] if state else None)
        reference = None
        if self.uses_reference and not lora:
            reference, result.reference_computed = self.reference.logps(everything)
            self.reference.shutdown()  # offline runs need the reference group only once
        policy = self.policy = PolicyGroup(cfg, inputs.model_path, self.total_steps, self.accumulation, self.env)
        result.policy_nodes = policy.group.node_ids()
        log.info("policy ranks on %d node(s): %s", len(set(result.policy_nodes)), result.policy_nodes)
        try:
            if self.uses_reference and lora:
                reference, result.reference_computed = self.reference.logps(everything, policy)
            n_train = len(inputs.train)
            train_ref = None if reference is None else (reference[0][:n_train], reference[1][:n_train])
            eval_ref = None if reference is None else (reference[0][n_train:], reference[1][n_train:])
            self._write_data_stats(eval_ref)
            if state:
                log.info("resuming from checkpoint %s (step %d)", state["tag"], state["step"])
                self.checkpoints.load(policy, state)
            self._train(policy, train_ref, eval_ref, result, state)
            policy.save_pretrained(str(result.final_model))
        finally:
            self.policy = None
            policy.shutdown()
        return result

    def _write_data_stats(self, eval_ref) -> None:
        """Statistics of the pairs for the monitors (length bias, near-identical pairs, label noise)."""
        ratio = self.cfg.monitor.near_identical_ratio
        stats = {
            "train": pair_statistics(self.inputs.train, ratio),
            "eval": pair_statistics(self.inputs.eval, ratio, eval_ref),
        }
        write_text(self.run_dir / DATA_STATS, json.dumps(stats, indent=2))

    def _train(self, policy: PolicyGroup, train_ref, eval_ref, result: OfflineResult, state: dict | None) -> None:
        writer = MetricsWriter(self.run_dir, append=state is not None)
        step = state["step"] if state else 0
        trainer = PolicyTrainer(self.cfg, policy, writer, self.accumulation, self.checkpoints, self.total_steps, step)
        try:
            result.before = state["before"] if state else trainer.evaluate(self.inputs.eval, eval_ref)
            trainer.checkpoint_state = {"before": result.before}
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


def accumulation_steps(cfg: RunConfig) -> int:
    """Micro-batches per rank per optimizer step, so that ranks x micro-batch x accumulation covers the batch."""
    t = cfg.train
    return max(1, math.ceil(t.batch_size / (cfg.cluster.policy_ranks * t.micro_batch_size)))
