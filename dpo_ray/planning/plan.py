"""A run's plan, before any actor starts: where each group's actors land (the placement Ray's scheduler makes, see
sizing/resources.place_groups), what each holds in memory by part (sizing/memory_estimate.py), and whether that
fits every GPU and every node; when it does not, which part overflows and the options that would make it fit."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ..reward_source import RewardKind, eval_judge_config, reward_source
from ..schema import RunConfig
from ..sizing import memory_estimate as memory
from ..sizing.judge_length import judge_max_model_len
from ..sizing.memory_estimate import GIB, ActorMemory, policy_shape, policy_zero_stage
from ..sizing.model_shape import ModelShape, model_shape
from ..sizing.reference_sharding import reference_sharding
from ..sizing.resources import (
    GroupNeed,
    group_needs,
    groups_live_together,
    place_groups,
    reference_group_needed,
)
from .nodes import NodeSpec


@dataclass(frozen=True)
class PlanModels:
    """The model directories a run loads (each holding at least a config.json); reward '' for a rule reward, judge ''
    for a judge function or none."""

    policy: str
    reference: str
    reward: str = ""
    judge: str = ""
    eval_judge: str = ""  # the held-out judge's, with a group of its own


@dataclass
class GroupPlan:
    need: GroupNeed
    nodes: list[int]  # node index of each actor
    gpus: list[list[int]]  # each actor's GPU indices on its node
    memory: ActorMemory  # one actor's (the group's actors are alike)
    setting: str  # the choice made for it: ZeRO stage, reference sharding, engine layout


@dataclass
class Problem:
    where: str
    text: str
    fixes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    command: str
    nodes: list[NodeSpec]
    source: str  # where the nodes came from
    strategy: str  # cluster.placement
    shape: ModelShape
    groups: list[GroupPlan]
    concurrent: bool
    problems: list[Problem]

    @property
    def fits(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        return render(self)


def device_bytes(nodes: list[NodeSpec], where: list[int], world: int, gpus: float) -> float:
    """The memory a rank's model lives in, as workers/device.device_memory measures it: its GPU, or its node's memory
    shared by the group's ranks (the smallest node's, over the nodes the group lands on)."""
    hosts = [nodes[i] for i in set(where)] or nodes
    if gpus:
        return min(n.gpu_memory or 0.0 for n in hosts)
    return min(n.memory for n in hosts) / world


def group_memory(
    cfg: RunConfig, name: str, models: PlanModels, device: float, world: int, max_model_len: int, sends: bool = False
) -> tuple[ActorMemory, str]:
    """One actor's memory in group name, and the choice it implies (ZeRO stage, sharding, ...); sends: the policy
    streams its weights (online, or to a moving reference)."""
    if name == "policy":
        shape = policy_shape(cfg, models.policy)
        stage = policy_zero_stage(cfg, shape, world, device)
        auto = " (auto)" if str(cfg.deepspeed.zero_stage) == "auto" else ""
        return memory.policy_rank(cfg, shape, world, stage, sends), f"ZeRO stage {stage}{auto}"
    if name == "reference":
        shape = model_shape(models.reference, cfg.model.trust_remote_code)
        replica = shape.params * memory.dtype_bytes(cfg)
        sharding = reference_sharding(str(cfg.reference.sharding), world, replica, device)
        return memory.reference_rank(cfg, shape, world, sharding == "zero3"), sharding
    if name == "rollout":
        shape = model_shape(models.policy, cfg.model.trust_remote_code)
        setting = f"tensor parallel {cfg.rollout.tensor_parallel_size}, max_model_len {max_model_len}"
        return memory.engine_gpu(cfg, shape, max_model_len, device), setting
    if name in ("judge", "eval_judge"):
        judge_dir = models.judge if name == "judge" else models.eval_judge
        if not judge_dir:
            return memory.rule_worker("a judge function"), "judge function"
        shape = model_shape(judge_dir, cfg.model.trust_remote_code)
        length = judge_max_model_len(max_model_len, shape.max_positions)
        tp = cfg.reward.judge_tensor_parallel_size
        judge = set_option(cfg, "rollout.tensor_parallel_size", tp)
        setting = f"judge engine, tensor parallel {tp}, max_model_len {length}"
        return memory.engine_gpu(judge, shape, length, device, synced=False), setting
    if models.reward:
        shape = model_shape(models.reward, cfg.model.trust_remote_code, classifier=True)
        return memory.reward_rank(cfg, shape), f"reward model, {shape.params / 1e6:.0f}M parameters"
    return memory.rule_worker(), "rule"


def engine_length(cfg: RunConfig, shape: ModelShape, known: int) -> int:
    """An engine's max_model_len: rollout.max_model_len, else the run's (known once prompts are read), else
    data.max_length + online.max_tokens (a self-judging policy's: a judge prompt of two), within the model's
    positions."""
    if cfg.rollout.max_model_len or known:
        return cfg.rollout.max_model_len or known
    length = (cfg.data.max_length or shape.max_positions) + cfg.online.max_tokens
    if reward_source(cfg).kind is RewardKind.self_judge:  # the engines also hold judge prompts of two samples
        return judge_max_model_len(length, shape.max_positions)
    return min(length, shape.max_positions) if shape.max_positions else length


def make_plan(
    cfg: RunConfig, command: str, nodes: list[NodeSpec], models: PlanModels, source: str, max_model_len: int = 0
) -> Plan:
    online = command == "online"
    needs = group_needs(cfg, reference_group_needed(cfg, online), online)
    shape = policy_shape(cfg, models.policy)
    together = groups_live_together(cfg, online)
    plan = Plan(command, nodes, source, str(cfg.cluster.placement), shape, [], together, [])
    try:
        placed = place_groups(needs, [n.resources() for n in nodes], str(cfg.cluster.placement), together)
    except ValueError as error:
        plan.problems.append(Problem("placement", str(error), ["more nodes, or fewer/smaller groups (cluster.*)"]))
        placed = [[] for _ in needs]
    length = engine_length(cfg, shape, max_model_len)
    for need, where in zip(needs, placed):
        world = need.size
        device = device_bytes(nodes, where, world, need.gpus)
        actor, setting = group_memory(cfg, need.name, models, device, world, length, together)
        if need.name == "policy":
            actor.notes.append(checkpointing_note(cfg, models, device, world, length))
        plan.groups.append(GroupPlan(need, where, [], actor, setting))
    assign_gpus(plan)
    problem = sequence_parallel_problem(cfg, shape, reference_group_needed(cfg, online))
    if problem:
        plan.problems.append(problem)
    check(cfg, plan, models, length)
    return plan


SEQUENCE_PARALLEL = "sequence parallelism"


def unrunnable(plan: Plan) -> str | None:
    """Why no setting of cluster.memory_check can run this plan (not a matter of memory), if anything."""
    problem = next((p for p in plan.problems if p.where == SEQUENCE_PARALLEL), None)
    return f"{problem.text}; use {' or '.join(problem.fixes)}" if problem else None


def sequence_parallel_problem(cfg: RunConfig, shape: ModelShape, reference_group: bool) -> Problem | None:
    """Each rank of a sequence-parallel group attends with an equal share of the attention and key-value heads; a
    reference group shares its sequences the same way."""
    sp, c = cfg.cluster.sequence_parallel_size, cfg.cluster
    if sp > 1 and reference_group and c.reference_ranks % sp:
        text = f"cluster.sequence_parallel_size={sp} does not divide cluster.reference_ranks={c.reference_ranks}"
        return Problem(SEQUENCE_PARALLEL, text, [f"cluster.reference_ranks={-(-c.reference_ranks // sp) * sp}"])
    if sp == 1 or not (shape.heads % sp or shape.kv_heads % sp):
        return None
    text = (
        f"cluster.sequence_parallel_size={sp} does not divide the model's {shape.heads} attention heads and "
        f"{shape.kv_heads} key-value heads"
    )
    sizes = sequence_parallel_sizes(shape, c.policy_ranks, range(2, shape.kv_heads + 1)) or [1]
    return Problem(SEQUENCE_PARALLEL, text, [f"cluster.sequence_parallel_size={n}" for n in sizes])


def sequence_parallel_sizes(shape: ModelShape, ranks: int, candidates) -> list[int]:
    """The candidates that make whole groups of the ranks and give each rank an equal share of the heads."""
    return [n for n in candidates if not (ranks % n or shape.heads % n or shape.kv_heads % n)]


def checkpointing_note(cfg: RunConfig, models: PlanModels, device: float, world: int, length: int) -> str:
    """The policy's activations the other way: with gradient checkpointing when it is off, without when on."""
    on = not cfg.model.gradient_checkpointing
    other_cfg = set_option(cfg, "model.gradient_checkpointing", on)
    other, _ = group_memory(other_cfg, "policy", models, device, world, length)
    activations = next(p.bytes for p in other.device + other.host if p.name == "activations")
    return f"with model.gradient_checkpointing={str(on).lower()} the activations would take {activations / GIB:.2f}"


def assign_gpus(plan: Plan) -> None:
    """GPU indices on each node, in the order actors are created (an offline run reuses the reference's GPUs)."""
    used = [0] * len(plan.nodes)
    for group in plan.groups:
        if not plan.concurrent:
            used = [0] * len(plan.nodes)
        for node in group.nodes:
            count = int(group.need.gpus)
            group.gpus.append(list(range(used[node], used[node] + count)))
            used[node] += count


def check(cfg: RunConfig, plan: Plan, models: PlanModels, length: int) -> None:
    """Each GPU against its memory, each node's host memory against its own (at the peak: all groups at once online;
    the larger phase offline), each engine's KV cache against one full sequence."""
    for group in plan.groups:
        if not group.nodes:
            continue
        m = group.memory
        gpu_memory = min((plan.nodes[i].gpu_memory or 0.0) for i in group.nodes)
        if group.need.gpus and m.device and gpu_memory and m.device_peak > gpu_memory:
            largest = max(m.device, key=lambda p: p.bytes)
            sync = sum(p.bytes for p in m.device if p.name == "weight sync")
            if m.device_total <= gpu_memory:  # a step fits; policy rank 0 sending the weights does not
                text = (
                    f"rank 0 holds {m.rank0_device / GIB:.1f} GiB of {gpu_memory / GIB:.1f} GiB while it sends the "
                    f"weights (rollout.sync_bucket_mb={cfg.rollout.sync_bucket_mb})"
                )
            elif sync and m.device_total - sync <= gpu_memory:  # vLLM's share fits; the sync beside it does not
                text = (
                    f"a weight sync holds {sync / GIB:.1f} GiB per GPU beside vLLM's share, and "
                    f"rollout.gpu_memory_utilization={cfg.rollout.gpu_memory_utilization} leaves "
                    f"{(gpu_memory - m.device_total + sync) / GIB:.1f} GiB of {gpu_memory / GIB:.1f} GiB"
                )
            else:
                text = (
                    f"{m.device_total / GIB:.1f} GiB per GPU of {gpu_memory / GIB:.1f} GiB (largest part: "
                    f"{largest.name}, {largest.bytes / GIB:.1f} GiB)"
                )
            plan.problems.append(Problem(group.need.name, text, fixes(cfg, plan, group, models, length, gpu_memory)))
        if m.shortfall:
            short = f"{m.shortfall / GIB:.2f} GiB short of one sequence of max_model_len={m.max_model_len}"
            text = f"the KV cache is {short}"
            plan.problems.append(Problem(group.need.name, text, fixes(cfg, plan, group, models, length, gpu_memory)))
    for node, held in node_host_memory(plan).items():
        spec = plan.nodes[node]
        if held and sum(held.values()) > spec.memory:
            parts = ", ".join(f"{name} {b / GIB:.1f}" for name, b in held.items())
            text = f"{sum(held.values()) / GIB:.1f} GiB of host memory ({parts}) on a node of {spec.memory / GIB:.1f}"
            largest = max(held, key=held.get)
            group = next(g for g in plan.groups if g.need.name == largest)
            room = spec.memory - (sum(held.values()) - held[largest])
            count = group.nodes.count(node)
            found = fixes(cfg, plan, group, models, length, room, count)
            plan.problems.append(Problem(f"{spec.name} host memory", text, found))


def node_host_memory(plan: Plan) -> dict[int, dict[str, float]]:
    """Host bytes each node holds at its peak, by group: all groups together online, the larger group offline; rank
    0's node also the model it gathers to save it."""
    phases = [plan.groups] if plan.concurrent else [[g] for g in plan.groups]
    peak: dict[int, dict[str, float]] = {}
    for phase in phases:
        held: dict[int, dict[str, float]] = {}
        for group in phase:
            for rank, node in enumerate(group.nodes):
                per_group = held.setdefault(node, {})
                extra = group.memory.rank0_host if rank == 0 else 0.0  # the model saved whole, on rank 0's node
                per_group[group.need.name] = per_group.get(group.need.name, 0.0) + group.memory.host_total + extra
        for node, by_group in held.items():
            if sum(by_group.values()) > sum(peak.get(node, {}).values()):
                peak[node] = by_group
    return peak


# Options that shrink a group's per-actor memory, tried in this order: (group, option, values to try).
REMEDIES = {
    "policy": [
        ("model.gradient_checkpointing", [True]),
        ("cluster.sequence_parallel_size", [2, 4, 8, 16]),
        ("model.mlp_tiles", [8, 16]),
        ("cluster.policy_ranks", [2, 4, 8, 16, 32, 64, 128, 256, 512]),
        ("deepspeed.offload_optimizer", ["cpu"]),
        ("model.lora.enabled", [True]),
        ("train.micro_batch_size", [2, 1]),
        ("data.max_length", [2048, 1024, 512]),
        ("rollout.sync_bucket_mb", [256]),
    ],
    "reference": [
        ("reference.sharding", ["zero3"]),
        ("cluster.reference_ranks", [2, 4, 8, 16, 32, 64]),
        ("train.micro_batch_size", [2, 1]),
    ],
    "rollout": [
        ("rollout.tensor_parallel_size", [2, 4, 8]),
        ("rollout.gpu_memory_utilization", [0.95, 0.9, 0.85, 0.8]),
        ("rollout.max_model_len", [8192, 4096, 2048, 1024]),
        ("rollout.sync_bucket_mb", [256]),
    ],
    "reward": [("reward.micro_batch_size", [8, 1])],
    "judge": [("reward.judge_tensor_parallel_size", [2, 4, 8]), ("rollout.gpu_memory_utilization", [0.9, 0.95])],
}
REMEDIES["eval_judge"] = REMEDIES["judge"]  # served and sized as the training judge


def set_option(cfg: RunConfig, dotted: str, value) -> RunConfig:
    changed = copy.deepcopy(cfg)
    *path, name = dotted.split(".")
    target = changed
    for part in path:
        target = getattr(target, part)
    setattr(target, name, value)
    return changed


GROWING = (
    "cluster.policy_ranks",
    "cluster.sequence_parallel_size",
    "cluster.reference_ranks",
    "rollout.tensor_parallel_size",
    "reward.judge_tensor_parallel_size",
)


def fixes(
    cfg: RunConfig, plan: Plan, group: GroupPlan, models: PlanModels, length: int, room: float, count: int = 0
) -> list[str]:
    """Each single option change (REMEDIES) after which the group fits its room: one actor on its GPU, or with count
    its count actors' host memory on a node (a change that adds GPU ranks says how many GPUs the group then asks
    for); when no single change does, the changes that keep the cluster's shape, in REMEDIES' order, each kept if it
    helps, until the group fits."""
    name, gpu = group.need.name, not count
    unit = "GiB per GPU" if gpu else f"GiB for the {count} on the node"

    def trial_of(base: RunConfig, option: str, value) -> tuple[RunConfig, float, bool, int]:
        trial = set_option(base, option, value)
        if option == "cluster.reference_ranks":
            trial = set_option(trial, "reference.sharding", "zero3")
        world = {"policy": trial.cluster.policy_ranks, "reference": trial.cluster.reference_ranks}.get(
            name, group.need.size
        )
        device = room if gpu else min(plan.nodes[i].memory for i in group.nodes) / world
        trial_length = trial.rollout.max_model_len or length
        actor, _ = group_memory(trial, name, models, device, world, trial_length, plan.concurrent)
        need = actor.device_peak if gpu else actor.host_total * count
        return trial, need, need <= room and not actor.shortfall, world

    def changes(base: RunConfig, option: str, values: list) -> list:
        if option.startswith("cluster.") and not gpu:
            return []
        current = option_value(base, option)
        if option == "cluster.sequence_parallel_size":
            values = sequence_parallel_sizes(plan.shape, base.cluster.policy_ranks, values)
        return [v for v in values if v != current and not (option.startswith(GROWING) and v < current)]

    found = []
    for option, values in REMEDIES.get(name, []):
        for value in changes(cfg, option, values):
            _, need, fits, world = trial_of(cfg, option, value)
            if fits:
                asks = f", {world * group.need.gpus:g} GPUs for the group" if option.startswith("cluster.") else ""
                found.append(f"{setting_text(option, value)} ({need / GIB:.1f} {unit}{asks})")
                break
    if found:
        return found
    base, kept = cfg, []
    _, now, _, _ = trial_of(cfg, "output_dir", cfg.output_dir)
    for option, values in REMEDIES.get(name, []):
        for value in changes(base, option, values) if not option.startswith("cluster.") else []:
            trial, need, fits, _ = trial_of(base, option, value)
            if need < now:
                base, now = trial, need
                kept.append(setting_text(option, value))
                if fits:
                    return [f"{' '.join(kept)} together ({now / GIB:.1f} {unit})"]
                break
    return []


def setting_text(option: str, value) -> str:
    shown = str(value).lower() if isinstance(value, bool) else value
    return f"{option}={shown}" + (" reference.sharding=zero3" if option == "cluster.reference_ranks" else "")


def option_value(cfg: RunConfig, dotted: str):
    target = cfg
    for part in dotted.split("."):
        target = getattr(target, part)
    return target


def active(shape) -> str:
    """' (12.88B active: 2 of 8 experts a token)' for a mixture of experts, '' for a dense model."""
    if not shape.active_params:
        return ""
    count, per_token = shape.experts
    return f" ({shape.active_params / 1e9:.2f}B active: {per_token} of {count} experts a token)"


def render(plan: Plan) -> str:
    """The plan as text: the cluster, each group's placement and per-actor memory by part, the verdict."""
    lines = [f"dpo-ray plan: {plan.command} on {describe_nodes(plan.nodes)} ({plan.source})"]
    s = plan.shape
    lines.append(
        f"policy model: {s.params / 1e9:.2f}B parameters{active(s)}, {s.layers} layers, hidden {s.hidden}, "
        f"{s.heads}/{s.kv_heads} heads, vocabulary {s.vocab}"
    )
    order = "all groups live at once" if plan.concurrent else "one group at a time: the reference is released first"
    lines += ["", f"groups, in start order ({order}), placement {plan.strategy}:"]
    width = max([9, *(len(g.need.name) for g in plan.groups)])
    for g in plan.groups:
        lines.append(
            f"  {g.need.name:<{width}} {g.need.size:>3} x {bundle_text(g.need.bundle())}  {g.setting}; "
            f"{placement_text(plan, g)}"
        )
    lines += ["", "memory per actor, GiB (actors of a group are alike):"]
    for g in plan.groups:
        m = g.memory
        if m.device:
            gpu_memory = min((plan.nodes[i].gpu_memory or 0.0) for i in g.nodes) if g.nodes else 0.0
            lines.append(
                f"  {g.need.name} GPU: {memory.parts_text(m.device)} = {m.device_total / GIB:.2f}"
                + (f" of {gpu_memory / GIB:.1f}" if gpu_memory else "")
            )
        lines.append(f"  {g.need.name} host: {memory.parts_text(m.host)} = {m.host_total / GIB:.2f}")
        lines += [f"    {note}" for note in m.notes]
    peak = node_host_memory(plan)
    if peak:
        lines += ["", "host memory per node at its peak, GiB:"]
        for node, held in sorted(peak.items()):
            parts = ", ".join(f"{name} {b / GIB:.1f}" for name, b in held.items())
            lines.append(
                f"  {plan.nodes[node].name}: {parts} = {sum(held.values()) / GIB:.1f} of "
                f"{plan.nodes[node].memory / GIB:.1f}"
            )
    unused = unused_gpus(plan)
    if unused:
        lines += ["", unused]
    if any(n.gpus and not n.gpu_memory for n in plan.nodes):
        lines += ["", "GPU memory unknown (no nvidia-smi answered on a GPU node): the GPUs were not checked"]
    lines.append("")
    if plan.fits:
        lines.append("verdict: fits")
    else:
        lines.append("verdict: does not fit")
        for p in plan.problems:
            lines.append(f"  {p.where}: {p.text}")
            lines.append(
                f"    would fit with: {'; '.join(p.fixes)}" if p.fixes else "    no single option tried fits it"
            )
    return "\n".join(lines)


def unused_gpus(plan: Plan) -> str:
    """A line on GPUs the nodes have and the run leaves idle at its peak ('' when it uses them all): every one when
    its ranks ask for none, or those an offline run's policy group leaves (a reference group is released before it
    starts; a preset's online groups do not run)."""
    have = sum(n.gpus for n in plan.nodes)
    held = [g.need.size * g.need.gpus for g in plan.groups]
    used = int(sum(held) if plan.concurrent else max(held, default=0))
    if not have or used >= have:
        return ""
    if not used:
        return (
            f"GPUs: the nodes have {have} and the run asks for none (cluster.gpus_per_rank=0: it would run on CPUs); "
            f"cluster.gpus_per_rank=1 cluster.policy_ranks={have} uses them, or a GPU preset (cluster=single_node_8gpu)"
        )
    policy = next((g.need for g in plan.groups if g.need.name == "policy"), None)
    why = ""
    if not plan.concurrent and policy is not None:
        most = int(have // max(policy.gpus, 1))
        why = f" (offline only the policy's {policy.size} rank(s) train; cluster.policy_ranks={most} trains on all)"
    return f"GPUs: the run uses {used} of the nodes' {have} at its peak{why}"


def describe_nodes(nodes: list[NodeSpec]) -> str:
    kinds: dict[tuple, int] = {}
    for n in nodes:
        key = (n.gpus, n.gpu_memory, n.cpus, n.memory)
        kinds[key] = kinds.get(key, 0) + 1
    parts = []
    for (gpus, gpu_memory, cpus, mem), count in kinds.items():
        gpu = f"{gpus} GPUs ({gpu_memory / GIB:.0f} GiB)" if gpus and gpu_memory else f"{gpus} GPUs"
        parts.append(f"{count} node(s) of {gpu + ', ' if gpus else ''}{cpus:g} CPUs, {mem / GIB:.0f} GiB")
    return " + ".join(parts)


def bundle_text(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in bundle.items()) + "}"


def placement_text(plan: Plan, group: GroupPlan) -> str:
    """Which ranks land on which node (and GPUs): 'node0: ranks 0-7 (GPUs 0-7); node1: ranks 8-15 (GPUs 0-7)'."""
    if not group.nodes:
        return "not placed"
    ranks: dict[int, list[int]] = {}
    gpus: dict[int, list[int]] = {}
    for rank, (node, held) in enumerate(zip(group.nodes, group.gpus)):
        ranks.setdefault(node, []).append(rank)
        gpus.setdefault(node, []).extend(held)
    return "; ".join(
        f"{plan.nodes[n].name}: ranks {spans(r)}" + (f" (GPUs {spans(gpus[n])})" if gpus[n] else "")
        for n, r in ranks.items()
    )


def spans(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            out.append(f"{start}" if start == n else f"{start}-{n}")
            start = None
    return ",".join(out)


def plan_models(cfg: RunConfig, command: str) -> PlanModels:
    """The model directories the run would load: built-in names resolved (built once into the cache)."""
    from ..tasks.registry import MODELS, resolve_model

    policy = resolve_model(cfg).model_path if cfg.model.path in MODELS or cfg.model.start_from else cfg.model.path
    if command != "online":
        return PlanModels(policy, cfg.model.reference_path or policy)
    reward = reward_source(cfg).resolved(cfg)
    judged = eval_judge_config(cfg)
    eval_judge = reward_source(judged).resolved(judged).judge_model if judged is not None else ""
    return PlanModels(policy, cfg.model.reference_path or policy, reward.reward_model, reward.judge_model, eval_judge)


def verdict(plan: Plan) -> str:
    """The verdict lines of render(plan)."""
    text = render(plan)
    return text[text.index("verdict:") :]
