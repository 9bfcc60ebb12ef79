"""Processes kept between groups (cluster.reuse_rank_processes): a stopped policy, reference or engine group's
actors wait, with their reservation (and a rank's process group), for the next group of the same name, shape and
placement that this driver starts in the same Ray cluster; it builds its workers in them. A start is mostly imports
(bench/process_reuse.py), which a session of many short runs (a sweep in a notebook, the test suite) would otherwise
pay for every group."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import ray

from ..sizing.resources import GroupNeed


class Parked(NamedTuple):
    placement: Any
    actors: list
    env: dict[str, str]


_parked: dict[tuple, Parked] = {}  # by shape(): at most one group of each
_taken: dict[str, Parked] = {}  # by placement id: given out by take(), not yet claimed by the group built in it


def shape(need: GroupNeed, strategy: str) -> tuple:
    """What a group must match to reuse parked actors; the cluster is part of it (a new one has none of them)."""
    bundle = tuple(sorted(need.bundle().items()))
    return ray.get_runtime_context().gcs_address, need.name, need.size, bundle, strategy


def park(need: GroupNeed, strategy: str, placement, actors: list, env: dict[str, str]) -> None:
    key = shape(need, strategy)
    if key in _parked:
        discard(_parked[key])
    _parked[key] = Parked(placement, actors, env)


def take(need: GroupNeed, strategy: str):
    """The reservation of a parked group of need's shape (its actors wait in claim()), or None; a parked group that
    lost an actor or a node meanwhile is given back instead."""
    parked = _parked.pop(shape(need, strategy), None)
    if parked is None:
        return None
    if not intact(parked):
        discard(parked)
        return None
    _taken[parked.placement.id.hex()] = parked
    return parked.placement


def intact(parked: Parked, timeout_s: float = 10) -> bool:
    """Whether every actor answers and the reservation still stands where it was made (no node of it lost)."""
    from ray.util import placement_group_table

    if placement_group_table(parked.placement).get("state") != "CREATED":
        return False
    pings = [actor.ready.remote() for actor in parked.actors]
    answered, _ = ray.wait(pings, num_returns=len(pings), timeout=timeout_s)
    try:
        ray.get(answered)
    except ray.exceptions.RayError:
        return False
    return len(answered) == len(pings)


def claim(placement) -> Parked | None:
    """The parked actors of a reservation take() gave out, once."""
    return _taken.pop(placement.id.hex(), None)


def make_room(need: GroupNeed) -> None:
    """Before a new reservation: Ray must place it as it would with nothing kept. On one node that is whether it fits
    beside the kept groups (those go if it does not); on several, where it lands, so every kept group goes. A kept
    group of its name goes in any case (a placement group's name is unique)."""
    if not _parked:
        return
    available = ray.available_resources()
    fits = all(available.get(r, 0.0) >= need.size * amount for r, amount in need.bundle().items())
    if not fits or sum(node["Alive"] for node in ray.nodes()) > 1:
        evict()
    else:
        evict(lambda key: key[1] == need.name)


def evict(which=lambda key: True) -> None:
    """The parked groups which(key) selects (all by default) give their actors and reservation back, and the call
    returns once Ray has their resources back; those of another cluster are only forgotten."""
    here = ray.get_runtime_context().gcs_address
    for key in [k for k in _parked if k[0] != here]:
        del _parked[key]
    evicted = [(key, _parked.pop(key)) for key in list(_parked) if which(key)]
    if not evicted:
        return
    expected = ray.available_resources()
    for (_, _, size, bundle, _), parked in evicted:
        for resource, amount in bundle:
            expected[resource] = expected.get(resource, 0.0) + size * amount
        discard(parked)
    freed(expected)


def freed(expected: dict[str, float], timeout_s: float = 30) -> None:
    """Wait until the cluster has the resources expected back: removal is asynchronous, and a reservation made before
    it ends would be placed around the groups going away."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        available = ray.available_resources()
        if all(available.get(r, 0.0) >= amount - 1e-6 for r, amount in expected.items() if r in ("CPU", "GPU")):
            return
        time.sleep(0.05)


def discard(parked: Parked) -> None:
    from .actor_group import release  # here: actor_group imports this module

    for actor in parked.actors:
        ray.kill(actor)
    release(parked.placement)
