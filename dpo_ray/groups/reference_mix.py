"""TR-DPO's moving reference: every k policy steps, policy rank 0 streams the policy's weights into every reference
rank, which mixes them into its own (ref = alpha * policy + (1 - alpha) * ref), over a sync group of their own built
as the engines' weight sync is (a bucket at a time; nothing crosses the object store but the manifest)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from ..data.tokenize import TokenizedPair
from ..schema import RunConfig
from ..workers.weights import REFERENCE
from .actor_group import gather
from .policy_group import PolicyGroup
from .reference_group import ReferenceGroup

log = logging.getLogger(__name__)


class ReferenceMix:
    def __init__(self, cfg: RunConfig, policy: PolicyGroup, reference: ReferenceGroup, mixes: int = 0):
        """mixes: how many mixes the reference has had (a resumed run's, once its weights are loaded)."""
        self.policy, self.reference, self.mixes = policy, reference, mixes
        self.alpha, self.every = cfg.algo.ref_model_mixup_alpha, cfg.algo.ref_model_sync_steps
        self.bucket_bytes, self.timeout_s = cfg.rollout.sync_bucket_mb << 20, cfg.cluster.call_timeout_s
        world_size = 1 + reference.size
        address, port = policy.weight_group_address()
        refs = policy.join_weight_group(address, port, world_size, self.timeout_s, REFERENCE)
        refs += reference.join_weight_group(address, port, world_size, self.timeout_s)
        gather(refs, self.timeout_s, "reference-mix group start")

    def after_step(self, step: int) -> bool:
        """Mix the policy into the reference if step ends a period of ref_model_sync_steps (TRL's rule)."""
        if step % self.every:
            return False
        began = time.perf_counter()
        specs, _ = self.policy.weight_manifest(REFERENCE)
        sending = self.policy.send_weights(self.bucket_bytes, REFERENCE)
        mixing = self.reference.mix_weights(specs, self.bucket_bytes, self.alpha)
        gather(sending + mixing, self.timeout_s, "reference mix")
        self.mixes += 1
        log.info(
            "step %d: policy mixed into the reference (alpha %.3g, mix %d) in %.1fs",
            step,
            self.alpha,
            self.mixes,
            time.perf_counter() - began,
        )
        return True

    def logps(self, pairs: Sequence[TokenizedPair], groups: list[list[int]]) -> tuple[list[float], list[float]]:
        """The moved reference's (chosen, rejected) log-probs of pairs, each scored in its micro-batch of groups."""
        return self.reference.logps(pairs, groups)

    def save(self, directory: Path) -> None:
        self.reference.save_weights(str(directory))

    def load(self, directory: Path, mixes: int) -> None:
        self.reference.load_weights(str(directory))
        self.mixes = mixes
