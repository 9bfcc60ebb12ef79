"""A group of Ray actors, each a thin shell around one plain-Python worker, placed by one placement group."""

from __future__ import annotations

import gc
import importlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..schema import ClusterConfig
from ..sizing.resources import GroupNeed
from . import warm_ranks
from .failures import GroupCallTimeout, NoCapacity

log = logging.getLogger(__name__)
RELEASE_TIMEOUT_S = 30.0  # a rank that has not dropped its worker by then is stuck (a collective a peer left): killed


@ray.remote
class WorkerActor:
    """Builds the worker named by import path and forwards calls to it; it holds no logic of its own."""

    def __init__(self, worker_path: str, *args, **kwargs):
        logging.basicConfig(level=logging.WARNING)
        self.worker = None
        self.rebuild(worker_path, *args, **kwargs)

    def rebuild(self, worker_path: str, *args, **kwargs) -> None:
        """Build the worker named by import path, in place of the one the process held (cluster.reuse_rank_processes:
        the torch.distributed group it joined stays, for the next worker of the same ranks)."""
        if self.worker is not None:
            self.release()
        module, name = worker_path.rsplit(".", 1)
        self.worker = getattr(importlib.import_module(module), name)(*args, **kwargs)

    def release(self) -> None:
        """Drop the worker and what it holds (its model, its DeepSpeed or vLLM engine), keeping the process."""
        close = getattr(self.worker, "close", None)
        if close is not None:
            close()
        self.worker = None
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():  # never initialises CUDA (a worker picks the devices)
            torch.cuda.empty_cache()

    def call(self, method: str, *args, **kwargs) -> Any:
        return getattr(self.worker, method)(*args, **kwargs)

    def ready(self) -> None:
        """Returns once the worker is built (Ray runs it after __init__)."""

    def rendezvous_address(self):
        from ..workers.distributed import free_port, node_address

        return node_address(), free_port()

    def leave_token(self, directories: list[str], name: str) -> str:
        from .shared_dirs import leave_token

        return leave_token(directories, name)

    def take_token(self, directories: list[str], name: str) -> None:
        from .shared_dirs import take_token

        take_token(directories, name)


def gather(refs: Sequence[ray.ObjectRef], timeout_s: float, what: str) -> list[Any]:
    """Every result, failing fast: a dead rank raises at once instead of leaving its peers waiting in a collective.

    When a rank dies mid-collective its peers fail too (a broken connection); the death is what gets raised then,
    since it is what a restart can cure."""
    pending, deadline, results = list(refs), time.monotonic() + timeout_s, {}
    lost = lambda ref: f"{what}: rank {refs.index(ref)} of {len(refs)} lost"  # which actor, in the run's own terms
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            raise GroupCallTimeout(f"{what}: {len(pending)} of {len(refs)} ranks still running after {timeout_s:.0f}s")
        try:
            results[ready[0]] = ray.get(ready[0])
        except RayActorError as death:
            death.add_note(lost(ready[0]))
            raise
        except RayTaskError as error:
            settled, _ = ray.wait(pending, num_returns=len(pending), timeout=10) if pending else ([], [])
            for ref in settled:
                try:
                    ray.get(ref)
                except RayActorError as death:
                    death.add_note(lost(ref))
                    raise death from error
                except RayTaskError:
                    pass
            raise
    return [results[ref] for ref in refs]


class PendingCall:
    """A call under way on some ranks: result() gathers their results (failing fast, as gather does) and combines
    them; finished_at is when its last rank was done (time.perf_counter), known once it is: watched, whenever the
    caller asks for it; else once result() has it."""

    def __init__(
        self,
        refs: list[ray.ObjectRef],
        timeout_s: float,
        what: str,
        combine: Callable[[list], Any] = list,
        watched: bool = True,
    ):
        self.refs, self.timeout_s, self.what, self.combine = refs, timeout_s, what, combine
        self.launched_at, self.finished_at = time.perf_counter(), None
        if watched:  # a thread notes when it ends, whoever waits for it and when
            threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        try:
            ray.wait(self.refs, num_returns=len(self.refs), fetch_local=False)
        except Exception:  # Ray shut down under it: result() reports what went wrong, if anyone asks
            return
        self.finished_at = time.perf_counter()

    def result(self) -> Any:
        parts = gather(self.refs, self.timeout_s, self.what)
        self.finished_at = self.finished_at or time.perf_counter()
        return self.combine(parts)


def concatenated(parts: list[list]) -> list:
    return [x for part in parts for x in part]


def reserve(need: GroupNeed, strategy: str, ready_timeout_s: float = 300, report_every_s: float = 30):
    """The placement group of need.size bundles of need's resources, once Ray has placed it; NoCapacity if it does
    not fit within ready_timeout_s (saying what it waited for every report_every_s meanwhile)."""
    warm_ranks.make_room(need)  # Ray places a new group as it would with no processes kept (where the plan says)
    bundle = need.bundle()
    placement = placement_group(
        [dict(bundle) for _ in range(need.size)], strategy=strategy, name=f"dpo-ray-{need.name}"
    )
    wanted = f"{need.name} group: {need.size} x {bundle} with {strategy} placement"
    deadline = time.monotonic() + ready_timeout_s
    while True:
        ready, _ = ray.wait([placement.ready()], timeout=max(0.0, min(report_every_s, deadline - time.monotonic())))
        if ready:
            return placement
        if time.monotonic() >= deadline:
            break
        log.info("%s: waiting for the cluster to have it (available: %s)", wanted, ray.available_resources())
    remove_placement_group(placement)
    raise NoCapacity(
        f"{wanted} did not fit the cluster within {ready_timeout_s:.0f}s (cluster.nodes_wait_s; available: "
        f"{ray.available_resources()}). "
        "Once the cluster has it the same command resumes from the last checkpoint, also on fewer ranks "
        "(cluster.policy_ranks; cluster.min_policy_ranks lets a run go on with fewer by itself)",
        need.name,
    )


def release(placement) -> None:
    """Remove a placement group that may be removed already (a group that failed to start gave it back; a stop while
    the groups started removed every group's at once)."""
    try:
        remove_placement_group(placement)
    except Exception:  # already removed
        pass


def bundle_nodes(placement) -> list[str]:
    """The Ray node id each bundle of a placement group landed on, in bundle order."""
    from ray.util import placement_group_table

    table = placement_group_table(placement)["bundles_to_node_id"]
    return [table[i] for i in range(len(table))]


class ActorGroup:
    def __init__(
        self,
        need: GroupNeed,
        worker_path: str,
        cluster: ClusterConfig,
        env: dict[str, str],
        init_kwargs: dict[str, Any] | None = None,
        ready_timeout_s: float | None = None,
        placement=None,
        reusable: bool = False,
    ):
        """need.size actors of worker_path, one per bundle of need's resources, placed by cluster.placement (or in
        placement, reserved already: groups started together are reserved one after another, as the plan places
        them); the group owns its placement group from here on. ready_timeout_s (default cluster.nodes_wait_s) bounds
        the wait for a placement that does not fit yet. reusable: with cluster.reuse_rank_processes, the group is
        built in a parked group's actors of its shape and environment, if any, and is parked when it shuts down."""
        self.name, self.size, self.call_timeout_s = need.name, need.size, cluster.call_timeout_s
        self.need, self.strategy, self.env = need, str(cluster.placement), env
        self.reusable = reusable and cluster.reuse_rank_processes
        wait_s = cluster.nodes_wait_s if ready_timeout_s is None else ready_timeout_s
        kept = warm_ranks.take(need, self.strategy) if self.reusable and placement is None else None
        self.placement = placement or kept or reserve(need, self.strategy, wait_s)
        kwargs = [dict(rank=rank, world_size=need.size, **(init_kwargs or {})) for rank in range(need.size)]
        parked = warm_ranks.claim(self.placement)
        rebuilt = self._rebuilt(parked, worker_path, kwargs) if parked else []
        self.actors = rebuilt or [
            WorkerActor.options(
                num_cpus=need.cpus,
                num_gpus=need.gpus,
                runtime_env={"env_vars": env},
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement, placement_group_bundle_index=rank),
            ).remote(worker_path, **kwargs[rank])
            for rank in range(need.size)
        ]
        try:
            self.wait_ready()
        except BaseException:
            self.shutdown()  # the caller never gets the group: its actors and reservation go now
            raise

    def _rebuilt(self, parked: warm_ranks.Parked, worker_path: str, kwargs: list[dict]) -> list:
        """The parked actors with this group's workers built in them; none (the parked actors gone) if their
        environment differs or a build fails: new actors then build it in the same reservation (of this group's
        shape, checked whole when taken), and fail as they would have."""
        if parked.env == self.env:
            try:
                gather(
                    [a.rebuild.remote(worker_path, **kw) for a, kw in zip(parked.actors, kwargs)],
                    self.call_timeout_s,
                    f"{self.name}: workers built in kept processes",
                )
                log.info("%s group: built in the %d process(es) a group before it left", self.name, self.size)
                return parked.actors
            except (RayActorError, RayTaskError, GroupCallTimeout):
                pass
        for actor in parked.actors:
            ray.kill(actor)
        return []

    def wait_ready(self, report_every_s: float = 5.0) -> None:
        """Wait until every actor has built its worker, logging actors ready / total as they come up (at most every
        report_every_s, and when all are); a worker that failed to build raises here."""
        began = last = time.perf_counter()
        pending, ready = [actor.ready.remote() for actor in self.actors], 0
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=self.call_timeout_s)
            if not done:
                raise GroupCallTimeout(
                    f"{self.name} group: {ready} of {self.size} actors ready after {self.call_timeout_s:.0f}s"
                )
            ray.get(done[0])
            ready, now = ready + 1, time.perf_counter()
            if ready == self.size or now - last >= report_every_s:
                log.info("%s group: %d/%d actors ready (%.1fs)", self.name, ready, self.size, now - began)
                last = now

    def start_distributed(self, *args) -> None:
        """Rank 0 names its address and a free port; then every rank joins the process group at once (start's
        further arguments: args)."""
        ref = self.actors[0].rendezvous_address.remote()
        address, port = gather([ref], self.call_timeout_s, f"{self.name}.rendezvous_address")[0]
        self.run("start", address, port, *args)

    def submit(self, method: str, *args, **kwargs) -> list[ray.ObjectRef]:
        """The same call on every rank, not waited for: one result reference per rank."""
        return [a.call.remote(method, *args, **kwargs) for a in self.actors]

    def run(self, method: str, *args, **kwargs) -> list[Any]:
        """The same call on every rank; returns each rank's result."""
        return gather(self.submit(method, *args, **kwargs), self.call_timeout_s, f"{self.name}.{method}")

    def run_shards(self, method: str, items: Sequence[Any], *args) -> list[Any]:
        """Split items into contiguous shards, one per rank (empty shards are not sent); the results concatenated."""
        return self.submit_shards(method, items, *args).result()

    def submit_shards(self, method: str, items: Sequence[Any], *args) -> PendingCall:
        """run_shards, not waited for."""
        bounds = [round(i * len(items) / self.size) for i in range(self.size + 1)]
        refs = [
            actor.call.remote(method, list(items[lo:hi]), *args)
            for actor, lo, hi in zip(self.actors, bounds, bounds[1:])
            if hi > lo
        ]
        return PendingCall(refs, self.call_timeout_s, f"{self.name}.{method}", concatenated)

    def run_each(self, method: str, per_rank_args: Sequence[Sequence[Any]]) -> list[Any]:
        """A call with rank-specific arguments."""
        if len(per_rank_args) != self.size:
            raise ValueError(f"{self.name}: {len(per_rank_args)} argument sets for {self.size} ranks")
        return self.submit_each_replica(method, per_rank_args, 1, watched=False).result()

    def run_each_replica(self, method: str, per_replica_args: Sequence[Sequence[Any]], ranks_each: int) -> list[Any]:
        """A call with replica-specific arguments, a replica being ranks_each consecutive ranks (a sequence-parallel
        group); each replica's result as its first rank gives it (its ranks end with the same)."""
        return self.submit_each_replica(method, per_replica_args, ranks_each, watched=False).result()

    def submit_each_replica(
        self,
        method: str,
        per_replica_args: Sequence[Sequence[Any]],
        ranks_each: int,
        combine: Callable[[list], Any] = list,
        watched: bool = True,
    ) -> PendingCall:
        """run_each_replica, not waited for; its result is combine(the replicas' results). A rank works through the
        calls it is sent in the order they were sent."""
        per_rank = [per_replica_args[rank // ranks_each] for rank in range(self.size)]
        refs = [a.call.remote(method, *args) for a, args in zip(self.actors, per_rank)]
        by_replica = lambda parts: combine(parts[::ranks_each])  # noqa: E731
        return PendingCall(refs, self.call_timeout_s, f"{self.name}.{method}", by_replica, watched)

    def node_ids(self) -> list[str]:
        return bundle_nodes(self.placement)

    def shutdown(self) -> None:
        """Kill the actors and give the reservation back; a reusable group whose every rank drops its worker in
        time (none dead or stuck in a collective) is parked instead."""
        if self.reusable and self.actors:
            try:
                gather([a.release.remote() for a in self.actors], RELEASE_TIMEOUT_S, f"{self.name}.release")
                warm_ranks.park(self.need, self.strategy, self.placement, self.actors, self.env)
                self.actors = []
                return
            except Exception:  # a rank lost or stuck, or Ray gone: the group goes as one never kept does
                pass
        for actor in self.actors:
            ray.kill(actor)
        release(self.placement)
        self.actors = []
