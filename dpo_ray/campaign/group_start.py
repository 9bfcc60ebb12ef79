"""Groups started together: reserved one after another in start order, so that Ray places each where the plan said,
then built at once, each in a thread of its own (their actors import, load and connect in parallel)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray.util.placement_group import remove_placement_group

from ..groups import warm_ranks
from ..groups.actor_group import release, reserve
from ..sizing.resources import GroupNeed
from .interrupts import interruption


def start_together(
    makers: dict[str, Callable[[Any], Any]],
    needs: Sequence[GroupNeed],
    strategy: str,
    started: list,
    wait_s: float = 300,
    reuse: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """makers[name](placement) for each need, in needs' order of reservation (each waited for up to wait_s), all
    running at once. Every group that starts goes into started (None, a maker's result that is no group, does not),
    even when another fails: the caller shuts them down; a failed group's reservation is removed (on a stop, every
    group's), and the first failure is raised. reuse: the groups whose reservation may be a parked group's
    (cluster.reuse_rank_processes)."""
    names = [need.name for need in needs]
    if sorted(names) != sorted(makers):
        raise ValueError(f"groups to start {sorted(makers)} are not the groups needed {sorted(names)}")
    placements: dict[str, Any] = {}
    try:
        for need in needs:  # kept groups first: a new reservation then finds the cluster as it would without them
            if need.name in reuse and (kept := warm_ranks.take(need, strategy)) is not None:
                placements[need.name] = kept
        for need in needs:
            if need.name not in placements:
                placements[need.name] = reserve(need, strategy, wait_s)
    except BaseException:
        for placement in placements.values():
            remove_placement_group(placement)
        raise
    groups: dict[str, Any] = {}
    failures: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="group-start") as pool:
        futures = {name: pool.submit(makers[name], placements[name]) for name in names}
        for name, future in futures.items():
            try:
                groups[name] = future.result()
            except BaseException as failure:  # the others still finish starting, to be shut down by the caller
                failures.append(failure)
                stopping = interruption(failure) is not None  # a stop: every group's actors go, so their loads end
                for placement in placements.values() if stopping else [placements[name]]:
                    release(placement)
                continue
            if groups[name] is not None:
                started.append(groups[name])
    if failures:
        raise failures[0]
    return groups
