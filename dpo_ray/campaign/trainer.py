"""Training the policy group on tokenised pairs: shuffled epochs of global batches, metrics, evals, checkpoints.
Offline runs call it once; online rounds call it once per round, and the step count carries on."""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..config import RunConfig
from ..data.batches import build_micro_batches, step_scale
from ..data.tokenize import TokenizedPair
from ..groups.policy_group import PolicyGroup
from ..objective import reduce_metrics
from .metrics import MetricsWriter
from .reference import ReferenceLogps


class PolicyTrainer:
    def __init__(self, cfg: RunConfig, policy: PolicyGroup, writer: MetricsWriter, accumulation: int,
                 checkpoint_dir: Path, total_steps: int, step: int = 0):
        self.cfg, self.policy, self.writer = cfg, policy, writer
        self.accumulation, self.checkpoint_dir, self.total_steps, self.step = accumulation, checkpoint_dir, total_steps, step
        self.step_seconds: List[float] = []
        from tqdm.auto import tqdm

        self.progress = tqdm(total=total_steps, initial=step, desc="dpo", disable=not cfg.progress, dynamic_ncols=True)

    def evaluate(self, pairs: Sequence[TokenizedPair], reference: Optional[ReferenceLogps]) -> Dict[str, float]:
        """Held-out metrics (TRL's names, prefixed eval_), also written to the metrics log at the current step."""
        _, plan = build_micro_batches(pairs, range(len(pairs)), self.policy.size, self.cfg.train.micro_batch_size, reference)
        metrics = {f"eval_{k}": v for k, v in reduce_metrics(self.policy.evaluate(plan, step_scale(pairs))).items()}
        self.writer.write(self.step, metrics)
        return metrics

    def train(self, pairs: Sequence[TokenizedPair], reference: Optional[ReferenceLogps], epochs: int, shuffle_seed: int,
              eval_pairs: Sequence[TokenizedPair] = (), eval_reference: Optional[ReferenceLogps] = None,
              last_step: Optional[int] = None) -> None:
        """epochs passes over pairs (reshuffled each epoch), stopping early at last_step (a global step)."""
        t = self.cfg.train
        last_step = self.total_steps if last_step is None else last_step
        for epoch in range(epochs):
            order = list(range(len(pairs)))
            random.Random(shuffle_seed + epoch).shuffle(order)
            for start in range(0, len(order), t.batch_size):
                if self.step >= last_step:
                    return
                indices = order[start:start + t.batch_size]
                self._step(pairs, indices, reference, epoch + start / len(order))
                if t.eval_every and self.step % t.eval_every == 0 and self.step < last_step and eval_pairs:
                    self.evaluate(eval_pairs, eval_reference)
                if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                    self.policy.save_checkpoint(str(self.checkpoint_dir), f"step_{self.step}")

    def _step(self, pairs: Sequence[TokenizedPair], indices: List[int], reference: Optional[ReferenceLogps], epoch: float) -> None:
        t = self.cfg.train
        _, plan = build_micro_batches(pairs, indices, self.policy.size, t.micro_batch_size, reference, self.accumulation)
        began = time.perf_counter()
        parts = self.policy.train_step(plan, step_scale([pairs[i] for i in indices]))
        seconds = time.perf_counter() - began
        self.step += 1
        self.step_seconds.append(seconds)
        metrics = reduce_metrics(parts)
        metrics.update(grad_norm=parts[0]["grad_norm"], learning_rate=parts[0]["learning_rate"], epoch=epoch,
                       step_seconds=seconds, tokens_per_second=sum(pairs[i].tokens for i in indices) / seconds)
        if self.step % t.log_every == 0:
            self.writer.write(self.step, metrics)
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['rewards/accuracies']:.2f}")

    def close(self) -> None:
        self.progress.close()
