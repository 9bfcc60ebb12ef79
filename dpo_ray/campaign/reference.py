"""Reference log-probs for pairs: from the on-disk cache, else from the reference group (started on first need and
kept until closed), or, for LoRA, from the policy with its adapter disabled."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from ..config import RunConfig
from ..data.batches import build_micro_batches
from ..data.tokenize import TokenizedPair
from ..groups.policy_group import PolicyGroup
from ..groups.reference_group import ReferenceGroup
from ..workers.device import DeviceSpec
from ..workers.models import model_fingerprint
from .reference_cache import ReferenceCache, cache_key

log = logging.getLogger(__name__)
ReferenceLogps = tuple[list[float], list[float]]


class ReferenceScorer:
    def __init__(self, cfg: RunConfig, reference_path: str, spec: DeviceSpec, env: dict[str, str]):
        self.cfg, self.reference_path, self.spec, self.env = cfg, reference_path, spec, env
        self.cache = ReferenceCache(cfg.cache_dir) if cfg.reference.cache else None
        self.group: ReferenceGroup | None = None

    def key(self, pairs: Sequence[TokenizedPair]) -> str:
        m = self.cfg.model
        settings = {
            "dtype": str(self.spec.dtype),
            "attn": str(m.attn_implementation),
            "lora": str(m.lora.enabled),
            "packing": str(self.cfg.data.layout != "padded"),
        }
        return cache_key(pairs, model_fingerprint(self.reference_path), settings)

    def logps(self, pairs: list[TokenizedPair], policy: PolicyGroup | None = None) -> tuple[ReferenceLogps, bool]:
        """(chosen, rejected) reference log-probs for pairs, and whether they had to be computed."""
        key = self.key(pairs)
        cached = self.cache.load(key) if self.cache else None
        if cached is not None:
            log.info("reference log-probs: cache hit %s", key)
            return cached, False
        start = time.perf_counter()
        if policy is not None:
            chosen, rejected = self._from_policy(pairs, policy)
        else:
            self.start()
            chosen, rejected = self.group.logps(pairs)
        log.info("reference log-probs for %d pairs in %.1fs", len(pairs), time.perf_counter() - start)
        if self.cache:
            self.cache.save(key, chosen, rejected)
        return (chosen, rejected), True

    def start(self) -> None:
        """Start the reference group now (its replicas load while other groups start) instead of on first need."""
        if self.group is None:
            self.group = ReferenceGroup(self.cfg, self.reference_path, self.env)

    def _from_policy(self, pairs: list[TokenizedPair], policy: PolicyGroup) -> ReferenceLogps:
        index_plan, plan = build_micro_batches(
            pairs, range(len(pairs)), policy.size, self.cfg.reference.micro_batch_size, None
        )
        chosen, rejected = [0.0] * len(pairs), [0.0] * len(pairs)
        for rank_indices, (rank_chosen, rank_rejected) in zip(index_plan, policy.reference_logps(plan)):
            order = [i for idx in rank_indices for i in idx]  # the worker skips fillers, so this lines up
            for i, c, r in zip(order, rank_chosen, rank_rejected, strict=True):
                chosen[i], rejected[i] = c, r
        return chosen, rejected

    def shutdown(self) -> None:
        """Free the reference group (a later call starts it again)."""
        if self.group is not None:
            self.group.shutdown()
            self.group = None
