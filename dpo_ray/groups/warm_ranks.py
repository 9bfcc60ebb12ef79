"""Processes kept between groups (cluster.reuse_rank_processes): a stopped policy, reference or engine group's
actors wait, with their reservation (and a rank's process group), for the next group of the same name, shape and
placement that this driver starts in the same Ray cluster; it builds its workers in them. A start is mostly imports
(~5 s a rank, ~10 s a vLLM engine on a CPU core), which a session of many short runs (a sweep in a notebook, the test
suite) would otherwise pay for every group."""

from __future__ import annotations

from typing import Any, NamedTuple

import ray
from ray.util.placement_group import remove_placement_group

from ..sizing.resources import GroupNeed


class Parked(NamedTuple):
    placement: Any
    actors: list
    env: dict[str, str]


_parked: dict[tuple, Parked] = {}  # by shape(): at most one group of each
_taken: dict[str, Parked] = {}  # by placement id: taken by reserve(), not yet claimed by the group built in it


def shape(need: GroupNeed, strategy: str) -> tuple:
    """What a group must match to reuse parked actors; the cluster is part of it (a new one has none of them)."""
    bundle = tuple(sorted(need.bundle().items()))
    return ray.get_runtime_context().gcs_address, need.name, need.size, bundle, strategy


def park(need: GroupNeed, strategy: str, placement, actors: list, env: dict[str, str]) -> None:
    previous = _parked.pop(shape(need, strategy), None)
    if previous is not None:
        discard(previous)
    _parked[shape(need, strategy)] = Parked(placement, actors, env)


def take(need: GroupNeed, strategy: str):
    """The reservation of a parked group of need's shape (its actors wait in claim()), or None."""
    parked = _parked.pop(shape(need, strategy), None)
    if parked is None:
        return None
    _taken[parked.placement.id.hex()] = parked
    return parked.placement


def claim(placement) -> Parked | None:
    """The parked actors of a reservation take() gave out, once."""
    return _taken.pop(placement.id.hex(), None)


def any_parked() -> bool:
    return bool(_parked)


def evict(name: str | None = None) -> None:
    """Every parked group (of that name) gives its actors and reservation back; one of another cluster is only
    forgotten."""
    here = ray.get_runtime_context().gcs_address
    for key in [k for k in _parked if name in (None, k[1])]:
        parked = _parked.pop(key)
        if key[0] == here:
            discard(parked)


def discard(parked: Parked) -> None:
    for actor in parked.actors:
        ray.kill(actor)
    try:
        remove_placement_group(parked.placement)
    except Exception:  # already removed
        pass
