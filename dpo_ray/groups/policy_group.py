"""The policy group: N DeepSpeed ranks of the trainable policy, at the ZeRO stage the run asks for or fits."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import ray

from ..data.batches import MicroBatch, StepScale
from ..schema import RunConfig
from ..sizing.memory_estimate import policy_rank, policy_shape, policy_zero_stage, rank_bytes
from ..sizing.resources import policy_need
from ..workers.specs import PolicySpec
from ..workers.weights import ENGINES, START
from .actor_group import ActorGroup, gather
from .shared_dirs import require_shared

log = logging.getLogger(__name__)


class PolicyGroup:
    def __init__(
        self,
        cfg: RunConfig,
        model_path: str,
        total_steps: int,
        accumulation: int,
        env: dict[str, str],
        placement=None,
    ):
        kwargs = dict(cfg=PolicySpec.of(cfg), model_path=model_path, total_steps=total_steps, accumulation=accumulation)
        self.sequence_parallel_size = cfg.cluster.sequence_parallel_size
        began = time.perf_counter()
        self.group = ActorGroup(
            policy_need(cfg),
            "dpo_ray.workers.policy.PolicyWorker",
            cfg.cluster,
            env,
            kwargs,
            placement=placement,
            reusable=True,
        )
        require_shared(self.group, cfg)  # before any model loads
        self.zero_stage = self._zero_stage(cfg, model_path)
        log.info("policy group: loading %s on %d rank(s) at ZeRO stage %d", model_path, self.size, self.zero_stage)
        self.group.start_distributed(self.zero_stage)
        log.info(
            "policy group: %d rank(s) loaded the model at ZeRO stage %d in %.1fs",
            self.group.size,
            self.zero_stage,
            time.perf_counter() - began,
        )

    def _zero_stage(self, cfg: RunConfig, model_path: str) -> int:
        """deepspeed.zero_stage, or for auto the lowest stage at which a rank's estimated memory fits every rank's
        device (decided here, once, so that all ranks agree; dpo-ray plan decides the same)."""
        if str(cfg.deepspeed.zero_stage) != "auto":
            return int(str(cfg.deepspeed.zero_stage))
        shape, device = policy_shape(cfg, model_path), min(self.group.run("device_memory"))
        stage = policy_zero_stage(cfg, shape, self.group.size, device)
        log.info(
            "policy group: ZeRO stage %d (deepspeed.zero_stage=auto): %.2f GB estimated per rank of %.1f GB",
            stage,
            rank_bytes(policy_rank(cfg, shape, self.group.size, stage), cfg.cluster.gpus_per_rank > 0) / 1e9,
            device / 1e9,
        )
        return stage

    @property
    def size(self) -> int:
        return self.group.size

    @property
    def replicas(self) -> int:
        """Data-parallel replicas: the ranks of a sequence-parallel group take the same micro-batches, as one."""
        return self.group.size // self.sequence_parallel_size

    def _each_replica(self, method: str, plan: list[list[MicroBatch]], *args) -> list:
        """plan[i] to every rank of replica i; each replica's result."""
        return self.group.run_each_replica(method, [(part, *args) for part in plan], self.sequence_parallel_size)

    def train_step(self, plan: list[list[MicroBatch]], scale: StepScale) -> list[dict[str, float]]:
        return self._each_replica("train_step", plan, scale)

    def evaluate(self, plan: list[list[MicroBatch]], scale: StepScale) -> list[dict[str, float]]:
        return self._each_replica("evaluate", plan, scale)

    def reference_logps(
        self, plan: list[list[MicroBatch]], weights: str = START
    ) -> list[list[list[tuple[float, float]]]]:
        """Each replica's scores of its micro-batches under weights (see PolicyWorker.reference_logps)."""
        return self._each_replica("reference_logps", plan, weights)

    def snapshot_weights(self) -> None:
        """Every rank keeps a host copy of the trainable weights it holds (reference_logps' ROUND_START)."""
        self.group.run("snapshot_weights")

    def weight_manifest(self, target: str = ENGINES) -> tuple[list[tuple], str | None]:
        """What a weight sync sends (see PolicyWorker.weight_manifest), asked of rank 0: every rank agrees."""
        ref = self.group.actors[0].call.remote("weight_manifest", target)
        return gather([ref], self.group.call_timeout_s, "policy")[0]

    def weight_group_address(self) -> tuple[str, int]:
        """Where the weight-sync group meets: rank 0's node and a free port there."""
        ref = self.group.actors[0].rendezvous_address.remote()
        return gather([ref], self.group.call_timeout_s, "policy.rendezvous_address")[0]

    def join_weight_group(
        self, address: str, port: int, world_size: int, timeout_s: float, target: str = ENGINES
    ) -> list[ray.ObjectRef]:
        return self.group.submit("join_weight_group", address, port, world_size, timeout_s, target)

    def send_weights(self, bucket_bytes: int, target: str = ENGINES) -> list[ray.ObjectRef]:
        return self.group.submit("send_weights", bucket_bytes, target)

    def save_pretrained(self, out_dir: str) -> None:
        self.group.run("save_pretrained", out_dir)

    def save_checkpoint(self, checkpoint_dir: str, tag: str) -> dict[str, list]:
        """Every rank writes its shards and hashes them: {path in the checkpoint: [size, sha256]} of them all."""
        written: dict[str, list] = {}
        for rank_files in self.group.run("save_checkpoint", checkpoint_dir, tag):
            written.update(rank_files)
        return written

    def hash_files(self, directory: Path, names: list[str]) -> dict[str, list]:
        """Size and SHA-256 of these files, hashed by the ranks in parallel, a share of about equal bytes each."""
        shares = byte_shares({n: Path(directory, n).stat().st_size for n in names}, self.size)
        hashed: dict[str, list] = {}
        for part in self.group.run_each("hash_files", [(str(directory), share) for share in shares]):
            hashed.update(part)
        return hashed

    def load_checkpoint(self, checkpoint_dir: str, tag: str) -> None:
        self.group.run("load_checkpoint", checkpoint_dir, tag)

    def load_resharded(self, checkpoint_dir: str, tag: str, scratch_dir: str) -> None:
        """A checkpoint another number of ranks wrote at ZeRO stage 1-3: converted by rank 0 into scratch_dir (every
        rank must see it: a shared file system, as output_dir is), loaded by all, then removed."""
        try:
            self.group.run("convert_to_universal", checkpoint_dir, tag, scratch_dir)
            self.group.run("load_checkpoint", scratch_dir, tag, True)
        finally:
            shutil.rmtree(scratch_dir, ignore_errors=True)

    def shutdown(self) -> None:
        self.group.shutdown()


def byte_shares(sizes: dict[str, int], ranks: int) -> list[list[str]]:
    """The files split into ranks shares of about equal bytes: the largest first, each to the lightest share."""
    shares: list[list[str]] = [[] for _ in range(ranks)]
    loads = [0] * ranks
    for size, name in sorted(((size, name) for name, size in sizes.items()), reverse=True):
        lightest = loads.index(min(loads))
        shares[lightest].append(name)
        loads[lightest] += size
    return shares
