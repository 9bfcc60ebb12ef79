"""Checking that the groups a run will start fit the Ray cluster, before any actor starts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..config import RunConfig


@dataclass(frozen=True)
class GroupNeed:
    name: str
    size: int
    cpus: float
    gpus: float

    def bundle(self) -> dict[str, float]:
        return {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}


def uses_reward_model(cfg: RunConfig) -> bool:
    """reward.fn wins; else reward.model_path names a reward model; else the task's rule."""
    return not cfg.reward.fn and bool(cfg.reward.model_path)


def rollout_need(cfg: RunConfig) -> GroupNeed:
    c = cfg.cluster
    gpus = float(cfg.rollout.tensor_parallel_size) if c.gpus_per_rank else 0.0
    return GroupNeed("rollout", c.rollout_engines, c.rollout_cpus, gpus)


def reward_need(cfg: RunConfig) -> GroupNeed:
    c = cfg.cluster
    return GroupNeed("reward", c.reward_ranks, c.reward_cpus, c.gpus_per_rank if uses_reward_model(cfg) else 0.0)


def policy_need(cfg: RunConfig) -> GroupNeed:
    c = cfg.cluster
    return GroupNeed("policy", c.policy_ranks, c.cpus_per_rank, c.gpus_per_rank)


def reference_need(cfg: RunConfig) -> GroupNeed:
    c = cfg.cluster
    return GroupNeed("reference", c.reference_ranks, c.cpus_per_rank, c.gpus_per_rank)


def reference_group_needed(cfg: RunConfig, online: bool) -> bool:
    """Whether a run starts a reference group: its loss uses a reference, that is not the LoRA policy's own base, and
    (offline) the policy cannot score it before its first step (another model, or reference.from_policy off)."""
    from ..loss_types import LOSS_TYPES, loss_names

    uses_reference = any(not LOSS_TYPES[name].reference_free for name in loss_names(cfg.algo.loss_type))
    if not uses_reference or cfg.model.lora.enabled:
        return False
    return online or not (cfg.reference.from_policy and cfg.model.reference_path in ("", cfg.model.path))


def group_needs(cfg: RunConfig, reference: bool, online: bool) -> list[GroupNeed]:
    """What each group of a run asks of the cluster: ranks, and CPUs and GPUs per rank."""
    needs = [policy_need(cfg)]
    if reference:
        needs.append(reference_need(cfg))
    if online:
        needs += [rollout_need(cfg), reward_need(cfg)]
    return needs


def _fits(bundle: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(k, 0.0) >= v for k, v in bundle.items())


def check_fit(
    needs: Sequence[GroupNeed], nodes: Sequence[dict[str, float]], strategy: str, expected_nodes: int = 0
) -> None:
    """Raise a ValueError naming the group and the shortfall when the groups (alive at the same time) cannot be placed
    on these nodes' resources (one dict per alive node)."""
    if expected_nodes and len(nodes) < expected_nodes:
        raise ValueError(f"cluster.nodes={expected_nodes}, but the Ray cluster has {len(nodes)} alive node(s)")
    totals = {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}
    for need in needs:
        bundle = need.bundle()
        hosts = [n for n in nodes if _fits(bundle, n)]
        if not hosts:
            raise ValueError(
                f"{need.name} group: no node has {bundle} for one rank "
                f"(largest node: {max(nodes, key=lambda n: n.get('GPU', 0) + n.get('CPU', 0), default={})})"
            )
        if strategy == "STRICT_SPREAD" and len(hosts) < need.size:
            raise ValueError(
                f"{need.name} group: STRICT_SPREAD needs {need.size} nodes with {bundle}, the cluster has {len(hosts)}"
            )
        if strategy == "STRICT_PACK" and not any(
            _fits({k: v * need.size for k, v in bundle.items()}, n) for n in nodes
        ):
            raise ValueError(f"{need.name} group: STRICT_PACK needs one node with {need.size} x {bundle}; none has it")
    for resource in ("CPU", "GPU"):
        wanted = sum(need.size * need.bundle().get(resource, 0.0) for need in needs)
        if wanted > totals[resource] + 1e-9:
            parts = ", ".join(
                f"{n.name} {n.size} x {n.bundle().get(resource, 0.0):g}" for n in needs if n.bundle().get(resource)
            )
            raise ValueError(
                f"the groups need {wanted:g} {resource} ({parts}) but the Ray cluster has {totals[resource]:g}: "
                f"short by {wanted - totals[resource]:g}"
            )


def alive_nodes() -> list[dict[str, float]]:
    """Each alive Ray node's total resources."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n["Alive"]]
