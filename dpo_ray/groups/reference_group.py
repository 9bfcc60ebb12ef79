"""The reference group: M ranks of the frozen reference, full replicas or one model partitioned over them (ZeRO-3),
scoring micro-batches dealt to them in turn."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import ray

from ..data.batches import as_micro_batches, deal_groups, scores_by_pair
from ..data.tokenize import TokenizedPair
from ..schema import RunConfig
from ..sizing.model_shape import model_shape
from ..sizing.reference_sharding import reference_sharding
from ..sizing.resources import reference_need
from ..workers.device import device_spec, rank_threads
from ..workers.specs import ReferenceSpec
from .actor_group import ActorGroup, PendingCall
from .shared_dirs import require_shared

log = logging.getLogger(__name__)


class ReferenceGroup:
    def __init__(self, cfg: RunConfig, model_path: str, env: dict[str, str], placement=None):
        spec = ReferenceSpec.of(cfg)
        worker, kwargs = "dpo_ray.workers.reference.ReferenceWorker", dict(cfg=spec, model_path=model_path)
        began = time.perf_counter()
        threads = rank_threads(spec.cpus_per_rank, spec.torch_threads)
        env = {**env, "OMP_NUM_THREADS": str(threads)}  # the run's environment sizes it for a policy rank
        need = reference_need(cfg)
        self.group = ActorGroup(need, worker, cfg.cluster, env, kwargs, placement=placement, reusable=True)
        require_shared(self.group, cfg)  # before any model loads
        self.sharding = str(cfg.reference.sharding)
        if self.sharding == "auto":
            # Decided where the model will live: the ranks report their device's memory.
            replica = (
                model_shape(model_path, cfg.model.trust_remote_code).params
                * device_spec(cfg.cluster.gpus_per_rank, cfg.model.dtype).dtype.itemsize
            )
            self.sharding = reference_sharding("auto", self.group.size, replica, min(self.group.run("device_memory")))
        log.info("reference group: loading %s on %d rank(s), %s", model_path, self.group.size, self.sharding)
        self.sequence_parallel_size = cfg.cluster.sequence_parallel_size
        if self.sharding == "zero3" or self.sequence_parallel_size > 1:  # a process group: ZeRO-3's, the sequences'
            self.group.start_distributed(self.sharding == "zero3")
        else:
            self.group.run("load_replica")
        held = self.group.run("parameter_bytes")
        log.info(
            "reference group: %d rank(s), %s, %.1f MB of parameters per rank, loaded in %.1fs",
            self.group.size,
            self.sharding,
            max(held) / 1e6,
            time.perf_counter() - began,
        )

    @property
    def size(self) -> int:
        return self.group.size

    def logps(self, pairs: Sequence[TokenizedPair], groups: list[list[int]]) -> tuple[list[float], list[float]]:
        """(chosen, rejected) of every pair, each scored in its micro-batch of groups (dealt to the replicas in turn:
        the ranks of a sequence-parallel group score the same micro-batches, and each ends with their scores)."""
        return self.submit_logps(pairs, groups, watched=False).result()

    def submit_logps(
        self, pairs: Sequence[TokenizedPair], groups: list[list[int]], watched: bool = True
    ) -> PendingCall:
        """logps, not waited for (the ranks work through the calls they are sent in turn); watched: its finished_at
        is when the ranks were done, not when the caller asked."""
        sp = self.sequence_parallel_size
        index_plan = deal_groups(groups, self.group.size // sp)
        plan = [(part,) for part in as_micro_batches(pairs, index_plan)]
        by_pair = lambda per_replica: scores_by_pair(index_plan, per_replica, len(pairs))  # noqa: E731
        return self.group.submit_each_replica("logps", plan, sp, by_pair, watched)

    def join_weight_group(self, address: str, port: int, world_size: int, timeout_s: float) -> list[ray.ObjectRef]:
        return self.group.submit("join_weight_group", address, port, world_size, timeout_s)

    def mix_weights(self, specs: list, bucket_bytes: int, alpha: float) -> list[ray.ObjectRef]:
        return self.group.submit("mix_weights", specs, bucket_bytes, alpha)

    def save_weights(self, directory: str) -> None:
        self.group.run("save_weights", directory)

    def load_weights(self, directory: str) -> None:
        self.group.run("load_weights", directory)

    def shutdown(self) -> None:
        self.group.shutdown()
