"""Reference log-probs for pairs: from the on-disk cache, else from the reference group (started on first need and
kept until closed), or, for LoRA, from the policy with its adapter disabled."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence

from ..data.batches import as_micro_batches, deal_groups, scores_by_pair
from ..data.tokenize import TokenizedPair
from ..groups.policy_group import PolicyGroup
from ..groups.reference_group import ReferenceGroup
from ..schema import RunConfig
from ..workers.device import DeviceSpec
from ..workers.models import model_fingerprint
from ..workers.weights import START
from .reference_cache import ReferenceCache, cache_key
from .reference_stream import ReferenceStream

log = logging.getLogger(__name__)
ReferenceLogps = tuple[list[float], list[float]]  # by pair index (a step's moved reference: dicts of its pairs)


WAVE = 8  # micro-batches per rank in one call of the reference pass: a progress update, not a noticeable cost


def waves(groups: list[list[int]], size: int) -> list[list[list[int]]]:
    """The micro-batches in calls of WAVE a rank, in order."""
    return [groups[lo : lo + WAVE * size] for lo in range(0, len(groups), WAVE * size)]


class ReferenceScorer:
    def __init__(self, cfg: RunConfig, reference_path: str, spec: DeviceSpec, env: dict[str, str]):
        self.cfg, self.reference_path, self.spec, self.env = cfg, reference_path, spec, env
        self.cache = ReferenceCache(cfg.cache_dir) if cfg.reference.cache else None
        self.group: ReferenceGroup | None = None

    def key(self, pairs: Sequence[TokenizedPair], groups: list[list[int]]) -> str:
        m = self.cfg.model
        settings = {
            "dtype": str(self.spec.dtype),
            "attn": str(m.attn_implementation),
            "lora": str(m.lora.enabled),
            "packing": str(self.cfg.data.layout != "padded"),
            "groups": json.dumps(groups),  # in bf16 a pair's log-probs depend on the micro-batch it is scored in
            "ld_alpha": str(self.cfg.algo.ld_alpha),
        }
        return cache_key(pairs, model_fingerprint(self.reference_path), settings)

    def logps(
        self,
        pairs: list[TokenizedPair],
        groups: list[list[int]],
        policy: PolicyGroup | None = None,
        mixes: int = 0,
        weights: str = START,
        stream: bool = False,
    ) -> tuple[ReferenceLogps, bool]:
        """(chosen, rejected) reference log-probs for pairs, each scored in its micro-batch of groups (the ones the
        policy will see it in first, so that at step 0 both compute the same numbers), and whether they had to be
        computed. With policy: the policy group scores them under weights (START: its adapter off for LoRA, as it is
        before any step; CURRENT: as it is, the round's reference under each_round). mixes: how many times TR-DPO has
        mixed the policy into the reference group's weights. Only the starting reference's are cached: a moved one's
        depend on the run's whole course, which the key does not hold. stream: when the reference group scores them,
        return at once with log-probs that are read as they arrive (reference_stream.py; cached once all are)."""
        cacheable = self.cache is not None and weights == START and not mixes
        key = self.key(pairs, groups) if cacheable else None
        cached = self.cache.load(key, len(pairs)) if cacheable else None
        if cached is not None:
            log.info("reference log-probs: cache hit %s", key)
            return cached, False
        start = time.perf_counter()
        if policy is None:
            self.start()
            if stream:
                done = (lambda scores: self.cache.save(key, *scores)) if cacheable else None
                return self._stream(pairs, groups, done).logps, True
        chosen, rejected = self._score(pairs, groups, policy, weights)
        log.info("reference log-probs for %d pairs in %.1fs", len(pairs), time.perf_counter() - start)
        if cacheable:
            self.cache.save(key, chosen, rejected)
        return (chosen, rejected), True

    def _score(
        self, pairs: list[TokenizedPair], groups: list[list[int]], policy: PolicyGroup | None, weights: str
    ) -> tuple[list[float], list[float]]:
        """Every pair scored in its micro-batch, WAVE micro-batches a rank at a time, so that the progress bar counts
        pairs with an ETA (each micro-batch is the same whichever wave scores it: so are its numbers)."""
        from tqdm.auto import tqdm

        size = policy.replicas if policy is not None else self.group.size
        chosen, rejected = [0.0] * len(pairs), [0.0] * len(pairs)
        total = sum(len(g) for g in groups)
        with tqdm(total=total, desc="reference", unit="pair", disable=not self.cfg.progress, dynamic_ncols=True) as bar:
            for part in waves(groups, size):
                if policy is not None:
                    index_plan = deal_groups(part, size)
                    per_rank = policy.reference_logps(as_micro_batches(pairs, index_plan), weights)
                    c, r = scores_by_pair(index_plan, per_rank, len(pairs))
                else:
                    c, r = self.group.logps(pairs, part)
                for i in (i for g in part for i in g):
                    chosen[i], rejected[i] = c[i], r[i]
                bar.update(sum(len(g) for g in part))
        return chosen, rejected

    def _stream(self, pairs: list[TokenizedPair], groups: list[list[int]], done) -> ReferenceStream:
        """Every wave sent to the reference group now, in order; none waited for. The last is watched: its end is the
        pass's (the ranks work through the waves in turn)."""
        parts = waves(groups, self.group.size)
        sent = [
            ([i for g in part for i in g], self.group.submit_logps(pairs, part, watched=k == len(parts) - 1))
            for k, part in enumerate(parts)
        ]
        log.info("reference log-probs for %d pairs: %d wave(s) sent, read as the policy trains", len(pairs), len(sent))
        return ReferenceStream(len(pairs), sent, done)

    def start(self, placement=None) -> None:
        """Start the reference group now (its replicas load while other groups start) instead of on first need; in
        placement when it is reserved already."""
        if self.group is None:
            self.group = ReferenceGroup(self.cfg, self.reference_path, self.env, placement)

    def shutdown(self) -> None:
        """Free the reference group (a later call starts it again)."""
        if self.group is not None:
            self.group.shutdown()
            self.group = None
