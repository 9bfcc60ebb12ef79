"""Offline DPO: pairs -> cached reference log-probs -> ZeRO-3 policy steps -> metrics, checkpoints, an HF model."""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..config import RunConfig
from ..data.batches import build_micro_batches, step_scale
from ..data.dataset import load_pairs, split_eval
from ..data.tokenize import TokenizedPair, TokenizeSettings
from ..groups.policy_group import PolicyGroup
from ..groups.reference_group import ReferenceGroup
from ..objective import needs_reference, reduce_metrics
from ..workers.device import device_spec, rank_env, rank_threads
from ..workers.models import load_tokenizer, model_fingerprint
from .atomic import write_text
from .metrics import MetricsWriter
from .reference_cache import ReferenceCache, cache_key
from .runtime import ensure_ray

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    """What a run trains on, after the embedded task (if any) is built and the data are tokenised."""

    model_path: str
    reference_path: str
    train: List[TokenizedPair]
    eval: List[TokenizedPair]
    task: Optional[object] = None


@dataclass
class OfflineResult:
    run_dir: Path
    final_model: Path
    before: Dict[str, float] = field(default_factory=dict)
    after: Dict[str, float] = field(default_factory=dict)
    reference_computed: bool = False  # whether reference log-probs were computed (not cached, not reference-free)
    step_seconds: List[float] = field(default_factory=list)
    policy_nodes: List[str] = field(default_factory=list)  # Ray node id of each policy rank


def prepare_inputs(cfg: RunConfig) -> Inputs:
    model_path, task = cfg.model.path, None
    train_files, eval_files = list(cfg.data.train_files), list(cfg.data.eval_files)
    if model_path == "embedded":
        from ..tasks.embedded import ensure_embedded_task

        task = ensure_embedded_task(cfg.task, cfg.cache_dir)
        model_path = str(task.model_dir)
        if not train_files:
            train_files, eval_files = [str(task.train_file)], eval_files or [str(task.eval_file)]
    if not train_files:
        raise ValueError("data.train_files is empty: name preference files, or use model.path=embedded for the built-in task")
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
    def __init__(self, cfg: RunConfig, inputs: Optional[Inputs] = None):
        self.cfg = cfg
        self.uses_reference = needs_reference(cfg.algo)  # also validates the loss settings before any work
        self.inputs = inputs or prepare_inputs(cfg)
        self.run_dir = Path(cfg.output_dir).expanduser()
        self.spec = device_spec(cfg.cluster.gpus_per_rank, cfg.model.dtype)
        self.env = rank_env(self.spec, rank_threads(cfg.cluster.cpus_per_rank, cfg.cluster.torch_threads))
        t = cfg.train
        self.world = cfg.cluster.policy_ranks
        self.accumulation = max(1, math.ceil(t.batch_size / (self.world * t.micro_batch_size)))
        steps_per_epoch = math.ceil(len(self.inputs.train) / t.batch_size)
        self.total_steps = steps_per_epoch * t.epochs if t.max_steps < 0 else t.max_steps

    # --- reference log-probs -------------------------------------------------------------------------------------
    def _reference_key(self, pairs: Sequence[TokenizedPair]) -> str:
        m = self.cfg.model
        settings = {"dtype": str(self.spec.dtype), "attn": m.attn_implementation, "lora": str(m.lora.enabled),
                    "packing": str(self.cfg.data.packing or self.cfg.data.prefix_sharing)}
        return cache_key(pairs, model_fingerprint(self.inputs.reference_path), settings)

    def reference_logps(self, pairs: List[TokenizedPair], policy: Optional[PolicyGroup] = None) -> Tuple[Tuple[List[float], List[float]], bool]:
        """(chosen, rejected) reference log-probs for pairs, from the cache or computed; also whether computed."""
        cache = ReferenceCache(self.cfg.cache_dir) if self.cfg.reference.cache else None
        key = self._reference_key(pairs)
        cached = cache.load(key) if cache else None
        if cached is not None:
            log.info("reference log-probs: cache hit %s", key)
            return cached, False
        start = time.perf_counter()
        if policy is not None:  # LoRA: the policy's base model with the adapter disabled
            index_plan, plan = build_micro_batches(pairs, range(len(pairs)), policy.size, self.cfg.reference.micro_batch_size, None)
            chosen, rejected = [0.0] * len(pairs), [0.0] * len(pairs)
            for rank_indices, (rank_chosen, rank_rejected) in zip(index_plan, policy.reference_logps(plan)):
                order = [i for idx in rank_indices for i in idx]  # the worker skips fillers, so this lines up
                for i, c, r in zip(order, rank_chosen, rank_rejected, strict=True):
                    chosen[i], rejected[i] = c, r
        else:
            group = ReferenceGroup(self.cfg, self.inputs.reference_path, self.env)
            try:
                chosen, rejected = group.logps(pairs)
            finally:
                group.shutdown()  # offline runs need the reference only once
        log.info("reference log-probs for %d pairs in %.1fs", len(pairs), time.perf_counter() - start)
        if cache:
            cache.save(key, chosen, rejected)
        return (chosen, rejected), True

    # --- evaluation ------------------------------------------------------------------------------------------------
    def evaluate(self, policy: PolicyGroup, reference: Tuple[List[float], List[float]]) -> Dict[str, float]:
        pairs = self.inputs.eval
        _, plan = build_micro_batches(pairs, range(len(pairs)), self.world, self.cfg.train.micro_batch_size, reference)
        metrics = reduce_metrics(policy.evaluate(plan, step_scale(pairs)))
        return {f"eval_{k}": v for k, v in metrics.items()}

    # --- the run ---------------------------------------------------------------------------------------------------
    def run(self) -> OfflineResult:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.run_dir / "config.json", json.dumps(asdict(cfg), indent=2))
        started = ensure_ray(cfg.cluster, cpus_needed=cfg.cluster.cpus_per_rank * (cfg.cluster.policy_ranks + cfg.cluster.reference_ranks))
        try:
            return self._run()
        finally:
            if started:
                import ray

                ray.shutdown()

    def _run(self) -> OfflineResult:
        cfg, inputs = self.cfg, self.inputs
        everything = inputs.train + inputs.eval
        lora = cfg.model.lora.enabled
        result = OfflineResult(self.run_dir, self.run_dir / "final", reference_computed=False)
        reference = None
        if self.uses_reference and not lora:
            reference, result.reference_computed = self.reference_logps(everything)
        policy = PolicyGroup(cfg, inputs.model_path, self.total_steps, self.accumulation, self.env)
        result.policy_nodes = policy.group.node_ids()
        log.info("policy ranks on %d node(s): %s", len(set(result.policy_nodes)), result.policy_nodes)
        try:
            if self.uses_reference and lora:
                reference, result.reference_computed = self.reference_logps(everything, policy)
            n_train = len(inputs.train)
            train_ref = None if reference is None else (reference[0][:n_train], reference[1][:n_train])
            eval_ref = None if reference is None else (reference[0][n_train:], reference[1][n_train:])
            self._train(policy, train_ref, eval_ref, result)
            policy.save_pretrained(str(result.final_model))
        finally:
            policy.shutdown()
        return result

    def _train(self, policy: PolicyGroup, train_ref, eval_ref, result: OfflineResult) -> None:
        cfg, t = self.cfg, self.cfg.train
        pairs = self.inputs.train
        writer = MetricsWriter(self.run_dir)
        result.before = self.evaluate(policy, eval_ref)
        writer.write(0, result.before)
        progress = _progress(cfg.progress, self.total_steps)
        step, epoch = 0, 0
        try:
            while step < self.total_steps:
                order = list(range(len(pairs)))
                random.Random(cfg.data.shuffle_seed + epoch).shuffle(order)
                for start in range(0, len(order), t.batch_size):
                    if step >= self.total_steps:
                        break
                    indices = order[start:start + t.batch_size]
                    _, plan = build_micro_batches(pairs, indices, self.world, t.micro_batch_size, train_ref, self.accumulation)
                    began = time.perf_counter()
                    parts = policy.train_step(plan, step_scale([pairs[i] for i in indices]))
                    seconds = time.perf_counter() - began
                    step += 1
                    result.step_seconds.append(seconds)
                    metrics = reduce_metrics(parts)
                    metrics.update(grad_norm=parts[0]["grad_norm"], learning_rate=parts[0]["learning_rate"],
                                   epoch=epoch + start / len(order), step_seconds=seconds,
                                   tokens_per_second=sum(pairs[i].tokens for i in indices) / seconds)
                    if step % t.log_every == 0:
                        writer.write(step, metrics)
                    progress.update(1)
                    progress.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['rewards/accuracies']:.2f}")
                    if t.eval_every and step % t.eval_every == 0 and step < self.total_steps:
                        writer.write(step, self.evaluate(policy, eval_ref))
                    if t.checkpoint_every and step % t.checkpoint_every == 0:
                        policy.save_checkpoint(str(self.run_dir / "checkpoints"), f"step_{step}")
                epoch += 1
            result.after = self.evaluate(policy, eval_ref)
            writer.write(step, result.after)
        finally:
            progress.close()
            writer.close()


def _progress(enabled: bool, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="dpo", disable=not enabled, dynamic_ncols=True)
