"""Starting or joining Ray for a campaign, and checking that its groups fit before any actor starts."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import ray

from ..config import ClusterConfig
from ..groups.resources import GroupNeed, alive_nodes, check_fit

log = logging.getLogger(__name__)
T = TypeVar("T")


def ensure_ray(cluster: ClusterConfig, needs: Sequence[GroupNeed], concurrent: bool = True) -> bool:
    """Join cluster.address (or RAY_ADDRESS, as set inside `ray job submit`), or start a local Ray sized for the groups;
    then check the groups fit (all at once, or one at a time when not concurrent). Returns True if this call started
    or joined Ray (and so should shut it down)."""
    started = False
    if not ray.is_initialized():
        address = cluster.address or os.environ.get("RAY_ADDRESS", "")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            # Groups alternate phases, so a local run may reserve more CPUs than the machine has.
            per_group = [n.size * n.cpus for n in needs]
            wanted = sum(per_group) if concurrent else max(per_group, default=1)
            ray.init(
                num_cpus=max(os.cpu_count() or 1, int(-(-wanted // 1))),
                include_dashboard=False,
                object_store_memory=1 << 30,
                log_to_driver=True,
            )
        started = True
    try:
        nodes = wait_for_nodes(cluster.nodes, cluster.nodes_wait_s)
        for together in [needs] if concurrent else [[n] for n in needs]:
            check_fit(together, nodes, cluster.placement, cluster.nodes)
    except ValueError:
        if started:
            ray.shutdown()
        raise
    return started


def wait_for_nodes(expected: int, timeout_s: float) -> list[dict[str, float]]:
    """The alive nodes, once there are at least `expected` of them or timeout_s has passed (then check_fit says so)."""
    deadline = time.monotonic() + timeout_s
    nodes = alive_nodes()
    while len(nodes) < expected and time.monotonic() < deadline:
        log.info("waiting for Ray nodes: %d of %d alive", len(nodes), expected)
        time.sleep(2)
        nodes = alive_nodes()
    return nodes


def with_restarts(attempt_fn: Callable[[bool], T], resume: bool, max_restarts: int, restarts: list[dict]) -> T:
    """attempt_fn(resume) until it succeeds; after a lost actor or a hung call, again (resuming from the latest
    checkpoint) up to max_restarts times. Each restart is recorded in restarts: what failed and when."""
    from ray.exceptions import RayActorError

    from ..groups.actor_group import GroupCallTimeout

    for attempt in range(max_restarts + 1):
        began = time.perf_counter()
        try:
            return attempt_fn(resume or attempt > 0)
        except (RayActorError, GroupCallTimeout) as failure:
            if attempt == max_restarts:
                raise
            restarts.append(
                {
                    "attempt": attempt + 1,
                    "error": f"{type(failure).__name__}: {failure}"[:500],
                    "failed_after_s": time.perf_counter() - began,
                }
            )
            log.warning(
                "attempt %d failed (%s); restarting the groups from the latest checkpoint (%d of %d restarts)",
                attempt + 1,
                type(failure).__name__,
                attempt + 1,
                max_restarts,
            )
    raise AssertionError("unreachable")
