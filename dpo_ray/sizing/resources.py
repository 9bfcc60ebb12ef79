"""What each group of a run asks of the Ray cluster, where Ray's scheduler places it, and whether it fits: checked
from the nodes' resources before any actor starts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..reward_source import eval_judge_config, eval_judge_group_needed, reward_source
from ..schema import RunConfig


@dataclass(frozen=True)
class GroupNeed:
    name: str
    size: int
    cpus: float
    gpus: float

    def bundle(self) -> dict[str, float]:
        return {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}


def rollout_need(cfg: RunConfig) -> GroupNeed:
    c = cfg.cluster
    gpus = float(cfg.rollout.tensor_parallel_size) if c.gpus_per_rank else 0.0
    return GroupNeed("rollout", c.rollout_engines, c.rollout_cpus, gpus)


def reward_need(cfg: RunConfig) -> GroupNeed:
    c = cfg.cluster
    gpus = c.gpus_per_rank if reward_source(cfg).reward_on_gpu else 0.0
    return GroupNeed("reward", c.reward_ranks, c.reward_cpus, gpus)


def judge_need(cfg: RunConfig) -> GroupNeed:
    """Sized and placed like the reward group: a judge model is one vLLM engine a rank (over judge_tensor_parallel_size
    GPUs, as a rollout engine is over its own), a judge function a worker."""
    c = cfg.cluster
    on_gpu = reward_source(cfg).judge_on_gpu and c.gpus_per_rank
    gpus = float(cfg.reward.judge_tensor_parallel_size) if on_gpu else 0.0
    return GroupNeed("judge", c.reward_ranks, c.reward_cpus, gpus)


def policy_need(cfg: RunConfig) -> GroupNeed:
    c = cfg.cluster
    return GroupNeed("policy", c.policy_ranks, c.cpus_per_rank, c.gpus_per_rank)


def reference_need(cfg: RunConfig) -> GroupNeed:
    c = cfg.cluster
    return GroupNeed("reference", c.reference_ranks, c.reference_rank_cpus(), c.gpus_per_rank)


def reference_group_needed(cfg: RunConfig, online: bool) -> bool:
    """Whether a run starts a reference group: its loss uses a reference, that is not the LoRA policy's own base, and
    (offline) the policy cannot score it before its first step (another model, or reference.from_policy off) or it
    moves (TR-DPO)."""
    from ..losses.registry import LOSSES, loss_names

    uses_reference = any(not LOSSES[name].reference_free for name in loss_names(cfg.algo.loss_type))
    if not uses_reference or cfg.model.lora.enabled:
        return False
    moving = cfg.algo.sync_ref_model  # TR-DPO: the reference moves on its own while the policy trains
    return online or moving or not (cfg.reference.from_policy and cfg.model.reference_path in ("", cfg.model.path))


def groups_live_together(cfg: RunConfig, online: bool) -> bool:
    """Whether a run's groups all live at once (online; offline TR-DPO, whose reference moves while the policy
    trains), or one at a time (offline: the reference is released before the policy starts)."""
    return online or cfg.algo.sync_ref_model


def group_needs(cfg: RunConfig, reference: bool, online: bool) -> list[GroupNeed]:
    """What each group of a run asks of the cluster (ranks, and CPUs and GPUs per rank), in the order the campaign
    starts them: offline the reference (released before) the policy; online rollout, reward (unless a judged run
    has none to evaluate with), judge (when judged), the held-out judge (one of its own), reference, policy."""
    needs = [rollout_need(cfg)] if online else []
    reward = reward_source(cfg)
    needs += [reward_need(cfg)] if online and reward.reward_group_needed else []
    needs += [judge_need(cfg)] if online and reward.judge_group_needed else []
    if online and eval_judge_group_needed(cfg):
        needs.append(replace(judge_need(eval_judge_config(cfg)), name="eval_judge"))
    if reference:
        needs.append(reference_need(cfg))
    return needs + [policy_need(cfg)]


def _fits(bundle: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(k, 0.0) >= v for k, v in bundle.items())


def check_fit(
    needs: Sequence[GroupNeed], nodes: Sequence[dict[str, float]], strategy: str, expected_nodes: int = 0
) -> list[list[int]]:
    """Raise a ValueError naming the group and the shortfall when the groups (alive at the same time) cannot be placed
    on these nodes' resources (one dict per alive node); else return where they land (place_groups)."""
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
    return place_groups(needs, nodes, strategy, concurrent=True)


def _score(bundle: dict[str, float], available: dict[str, float]) -> float:
    """Ray's LeastResourceScorer: the share of each asked resource a node has left after the bundle, summed (the
    emptier node wins); -1 when the bundle does not fit."""
    score = 0.0
    for key, wanted in bundle.items():
        have = available.get(key, 0.0)
        if wanted > have + 1e-9:
            return -1.0
        score += (have - wanted) / have if have else 0.0
    return score


def _best(bundle: dict[str, float], available: list[dict[str, float]], candidates: list[int]) -> int | None:
    """The candidate node Ray picks for a bundle: the highest score, the first such node on a tie."""
    scored = [(_score(bundle, available[i]), i) for i in candidates]
    best = max(scored, key=lambda s: s[0], default=(-1.0, None))
    return best[1] if best[0] >= 0 else None


def _take(bundle: dict[str, float], node: dict[str, float]) -> None:
    for key, wanted in bundle.items():
        node[key] = node.get(key, 0.0) - wanted


def place_group(need: GroupNeed, available: list[dict[str, float]], strategy: str) -> list[int] | None:
    """The node index of each of a group's bundles as Ray's placement-group scheduler chooses them
    (bundle_scheduling_policy.cc), taking them from available; None when Ray could not place the group."""
    bundle, n, nodes = need.bundle(), need.size, list(range(len(available)))
    chosen: list[int] = []
    if strategy == "PACK":  # the best node takes as many bundles as fit, then the next best node
        while len(chosen) < n:
            node = _best(bundle, available, nodes)
            if node is None:
                return None
            while len(chosen) < n and _score(bundle, available[node]) >= 0:
                _take(bundle, available[node])
                chosen.append(node)
            nodes.remove(node)
    elif strategy in ("SPREAD", "STRICT_SPREAD"):  # each bundle on a node of its own, while there are any
        used: list[int] = []
        for _ in range(n):
            node = _best(bundle, available, [i for i in nodes if i not in used])
            if node is None and strategy == "SPREAD":
                node = _best(bundle, available, used)
            if node is None:
                return None
            _take(bundle, available[node])
            chosen.append(node)
            used.append(node)
    else:  # STRICT_PACK: every bundle on one node
        node = _best({k: v * n for k, v in bundle.items()}, available, nodes)
        if node is None:
            return None
        for _ in range(n):
            _take(bundle, available[node])
        chosen = [node] * n
    return chosen


def place_groups(
    needs: Sequence[GroupNeed], nodes: Sequence[dict[str, float]], strategy: str, concurrent: bool
) -> list[list[int]]:
    """Where each group's bundles land, the groups created in order (each with the nodes' whole resources when not
    concurrent: an offline run releases its reference group before its policy group starts). A ValueError names a
    group Ray could not place although the totals fit (the bundles do not divide among the nodes)."""
    available = [dict(n) for n in nodes]
    placed = []
    for need in needs:
        if not concurrent:
            available = [dict(n) for n in nodes]
        where = place_group(need, available, strategy)
        if where is None:
            left = [{k: v for k, v in n.items() if k in ("CPU", "GPU")} for n in available]
            raise ValueError(
                f"{need.name} group: {need.size} x {need.bundle()} with {strategy} placement do not fit the nodes "
                f"left by the groups before it ({left})"
            )
        placed.append(where)
    return placed


def local_cpus(needs: Sequence[GroupNeed], concurrent: bool, machine_cpus: int) -> int:
    """CPUs a local Ray starts with: the machine's, or what the groups reserve if more (groups alternate phases, so a
    local run may reserve more CPUs than the machine has): all at once, or the largest when not concurrent."""
    per_group = [n.size * n.cpus for n in needs]
    wanted = sum(per_group) if concurrent else max(per_group, default=1)
    return max(machine_cpus, int(-(-wanted // 1)))
