"""Training the policy group on tokenised pairs: shuffled epochs of global batches, metrics, evals, checkpoints.
Offline runs call it once; online rounds call it once per round, and the step count carries on."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

from ..data.batches import build_micro_batches, step_groups, step_scale
from ..data.tokenize import TokenizedPair
from ..groups.policy_group import PolicyGroup
from ..groups.reference_mix import ReferenceMix
from ..objective import reduce_metrics
from ..run_files import NONFINITE_ROWS
from ..schema import RunConfig
from .checkpoints import CheckpointStore
from .metrics import MetricsWriter
from .reference import ReferenceLogps

log = logging.getLogger(__name__)


def accumulation_steps(cfg: RunConfig) -> int:
    """Micro-batches per replica per optimizer step, so that replicas x micro-batch x accumulation covers the batch."""
    t = cfg.train
    return max(1, math.ceil(t.batch_size / (cfg.cluster.data_parallel_ranks() * t.micro_batch_size)))


def epoch_order(n: int, epoch: int, shuffle_seed: int) -> list[int]:
    """The order in which an epoch visits n pairs (its batches are consecutive slices of it)."""
    order = list(range(n))
    random.Random(shuffle_seed + epoch).shuffle(order)
    return order


def epoch_groups(cfg: RunConfig, n: int, shuffle_seed: int) -> list[list[int]]:
    """The micro-batches of the first epoch over n pairs, exactly as the policy ranks will collate them: the reference
    scores pairs in these, so at step 0 policy and reference compute the same numbers (bf16 included)."""
    order, size = epoch_order(n, 0, shuffle_seed), cfg.train.batch_size
    world, micro, accumulation = cfg.cluster.data_parallel_ranks(), cfg.train.micro_batch_size, accumulation_steps(cfg)
    return [
        group for lo in range(0, n, size) for group in step_groups(order[lo : lo + size], world, micro, accumulation)
    ]


def eval_groups(cfg: RunConfig, n: int) -> list[list[int]]:
    """The micro-batches of a held-out evaluation over n pairs (see PolicyTrainer.evaluate)."""
    return step_groups(range(n), cfg.cluster.data_parallel_ranks(), cfg.train.micro_batch_size)


class NonFiniteLossError(FloatingPointError):
    """Training met a non-finite loss and train.on_nonfinite says stop (or the weights can no longer be trusted)."""


class PolicyTrainer:
    def __init__(
        self,
        cfg: RunConfig,
        policy: PolicyGroup,
        writer: MetricsWriter,
        checkpoints: CheckpointStore,
        total_steps: int,
        step: int = 0,
        checkpoint_state: dict | None = None,
        num_tokens: int = 0,
        reference_mix: ReferenceMix | None = None,
    ):
        """reference_mix: TR-DPO's moving reference (mixed after steps, and scoring pairs once it has moved)."""
        self.cfg, self.policy, self.writer = cfg, policy, writer
        self.reference_mix = reference_mix
        self.nonfinite_file = Path(cfg.output_dir).expanduser() / NONFINITE_ROWS
        self.skipped_pairs = 0
        self.accumulation = accumulation_steps(cfg)
        self.checkpoints, self.total_steps, self.step = checkpoints, total_steps, step
        self.num_tokens = num_tokens  # TRL's num_tokens: prompt and completion tokens of every pair trained on, so far
        # saved with every step checkpoint (e.g. the metrics before training)
        self.checkpoint_state = checkpoint_state or {}
        self.step_seconds: list[float] = []
        self.last_metrics: dict[str, float] = {}  # the latest step's metrics
        from tqdm.auto import tqdm

        self.progress = tqdm(total=total_steps, initial=step, desc="dpo", disable=not cfg.progress, dynamic_ncols=True)

    def evaluate(
        self, pairs: Sequence[TokenizedPair], reference: ReferenceLogps | None, reference_mixes: int = 0
    ) -> dict[str, float]:
        """Held-out metrics (TRL's names, prefixed eval_), also written to the metrics log at the current step.
        reference_mixes: the TR-DPO mixes the reference had had when it scored reference (a moved one scores anew)."""
        indices, micro = range(len(pairs)), self.cfg.train.micro_batch_size
        reference = self._current(pairs, step_groups(indices, self.policy.replicas, micro), reference, reference_mixes)
        _, plan = build_micro_batches(pairs, indices, self.policy.replicas, micro, reference)
        metrics = {f"eval_{k}": v for k, v in reduce_metrics(self.policy.evaluate(plan, step_scale(pairs))).items()}
        self.writer.write(self.step, metrics)
        return metrics

    def train(
        self,
        pairs: Sequence[TokenizedPair],
        reference: ReferenceLogps | None,
        epochs: int,
        shuffle_seed: int,
        eval_pairs: Sequence[TokenizedPair] = (),
        eval_reference: ReferenceLogps | None = None,
        skip_batches: int = 0,
        reference_mixes: int = 0,
    ) -> None:
        """epochs passes over pairs (reshuffled each epoch, so a resumed run skips the batches it already trained on),
        stopping at the trainer's total_steps. reference_mixes: as evaluate's, for reference and eval_reference."""
        t = self.cfg.train
        batch_index = 0
        for epoch in range(epochs):
            order = epoch_order(len(pairs), epoch, shuffle_seed)
            for start in range(0, len(order), t.batch_size):
                batch_index += 1
                if batch_index <= skip_batches:
                    continue
                if self.step >= self.total_steps:
                    return
                indices = order[start : start + t.batch_size]
                self._step(pairs, indices, reference, epoch + start / len(order), reference_mixes)
                if self.reference_mix is not None:
                    self.reference_mix.after_step(self.step)
                if t.eval_every and self.step % t.eval_every == 0 and self.step < self.total_steps and eval_pairs:
                    self.evaluate(eval_pairs, eval_reference, reference_mixes)
                if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                    state = {**self.resume_state(), **self.checkpoint_state}
                    self.checkpoints.save(self.policy, f"step_{self.step}", state, self.save_also)

    def resume_state(self) -> dict:
        """What a checkpoint's state records of the trainer: its step, tokens and (TR-DPO) the reference's mixes."""
        mixes = {"reference_mixes": self.reference_mix.mixes} if self.reference_mix is not None else {}
        return {"step": self.step, "num_tokens": self.num_tokens, **mixes}

    @property
    def save_also(self):
        """What a checkpoint holds beside the policy: TR-DPO's moved reference."""
        mix = self.reference_mix
        return mix.save if mix is not None and mix.mixes else None

    def _current(
        self, pairs: Sequence[TokenizedPair], groups: list[list[int]], reference: ReferenceLogps | None, mixes: int
    ) -> ReferenceLogps | None:
        """reference, or once TR-DPO has moved the reference since it scored it, the moved reference's log-probs of
        the pairs in groups (by pair index; scored in those micro-batches)."""
        mix = self.reference_mix
        if reference is None or mix is None or mix.mixes == mixes:
            return reference
        wanted = [i for group in groups for i in group]
        position = {i: k for k, i in enumerate(wanted)}
        chosen, rejected = mix.logps([pairs[i] for i in wanted], [[position[i] for i in g] for g in groups])
        return dict(zip(wanted, chosen)), dict(zip(wanted, rejected))

    def _step(
        self,
        pairs: Sequence[TokenizedPair],
        indices: list[int],
        reference: ReferenceLogps | None,
        epoch: float,
        reference_mixes: int,
    ) -> None:
        t = self.cfg.train
        groups = step_groups(indices, self.policy.replicas, t.micro_batch_size, self.accumulation)
        reference = self._current(pairs, groups, reference, reference_mixes)
        index_plan, plan = build_micro_batches(
            pairs, indices, self.policy.replicas, t.micro_batch_size, reference, self.accumulation
        )
        began = time.perf_counter()
        parts = self.policy.train_step(plan, step_scale([pairs[i] for i in indices]))
        seconds = time.perf_counter() - began
        self.step += 1
        self._guard(
            [
                [index_plan[rank][m][j] for m, positions in enumerate(part.pop("nonfinite")) for j in positions]
                for rank, part in enumerate(parts)
            ],
            parts[0]["grad_norm"],
        )
        self.step_seconds.append(seconds)
        self.num_tokens += sum(pairs[i].tokens for i in indices)
        metrics = reduce_metrics(parts)
        metrics.update(
            grad_norm=parts[0]["grad_norm"],
            learning_rate=parts[0]["learning_rate"],
            epoch=epoch,
            step_seconds=seconds,
            tokens_per_second=sum(pairs[i].tokens for i in indices) / seconds,
            num_tokens=self.num_tokens,
        )
        if self.skipped_pairs:
            metrics["nonfinite/skipped_pairs"] = self.skipped_pairs
        self.last_metrics = metrics
        if self.step % t.log_every == 0:
            self.writer.write(self.step, metrics)
        self.progress.update(1)
        shown = {"loss": f"{metrics['loss']:.4f}"}
        if "rewards/accuracies" in metrics:  # pairs; KTO has no accuracy, its margin shows instead
            shown["acc"] = f"{metrics['rewards/accuracies']:.2f}"
        elif "rewards/margins" in metrics:
            shown["margin"] = f"{metrics['rewards/margins']:.3f}"
        self.progress.set_postfix(shown)

    def _guard(self, nonfinite: list[list[int]], grad_norm: float) -> None:
        """Non-finite losses: their pairs (indices into this call's pairs) are saved; the run stops or skips them."""
        rows = sorted(i for rank_rows in nonfinite for i in rank_rows)
        if not rows:
            return
        self.skipped_pairs += len(rows)
        with self.nonfinite_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": self.step, "rows": rows}) + "\n")
        where = f"step {self.step}: non-finite loss on {len(rows)} pair(s) {rows[:20]} (all in {self.nonfinite_file})"
        if self.cfg.train.max_grad_norm and not math.isfinite(grad_norm):
            raise NonFiniteLossError(
                f"{where}; the gradient norm is {grad_norm}, so the weights are no longer trustworthy: "
                "resume from the last checkpoint (lower the learning rate, or fix the rows)"
            )
        if self.cfg.train.on_nonfinite == "stop":
            raise NonFiniteLossError(f"{where}; stopping (train.on_nonfinite=skip trains on without them)")
        log.warning("%s; skipped (%d pairs so far)", where, self.skipped_pairs)

    def close(self) -> None:
        self.progress.close()
