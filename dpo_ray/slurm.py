"""`python -m dpo_ray.slurm COMMAND [OVERRIDE ...]` (or `campaign FILE.yaml [OVERRIDE ...]`) prints the Slurm
shape a run needs, "NODES GPUS_PER_NODE CPUS_PER_NODE", for launch/slurm/submit.sh to pass to sbatch (--nodes,
--gres=gpu:N, --cpus-per-task)."""

from __future__ import annotations

import math
import sys


def shape(command: str, overrides: list[str]) -> tuple[int, int, int]:
    """Nodes (cluster.nodes, at least 1), the GPUs per node (the most the run's groups hold at once, spread evenly:
    offline runs finish the reference before the policy starts; online groups all live at once) and the CPUs per node:
    the most any node holds when Ray places the groups on nodes of that many GPUs (a node of 8 policy ranks may need
    more than an even share), or an even share when the run has no GPUs."""
    from .compose import compose
    from .sizing.resources import group_needs, place_groups, reference_group_needed

    cfg = compose(overrides, command)
    online = command == "online"
    needs = group_needs(cfg, reference=reference_group_needed(cfg, online), online=online)
    nodes = max(1, cfg.cluster.nodes)

    def per_node(resource: str) -> int:
        held = [n.size * n.bundle().get(resource, 0.0) for n in needs]
        return math.ceil((sum(held) if online else max(held)) / nodes)

    gpus = per_node("GPU")
    if not gpus:
        return nodes, 0, max(1, per_node("CPU"))
    unbounded = [{"CPU": UNBOUNDED_CPUS, "GPU": float(gpus)}] * nodes
    placed = place_groups(needs, unbounded, str(cfg.cluster.placement), concurrent=online)
    loads = []  # each group's CPUs on each node
    for need, where in zip(needs, placed):
        loads.append([need.cpus * where.count(node) for node in range(nodes)])
    held = [[sum(cpus) for cpus in zip(*loads)]] if online else loads
    return nodes, gpus, max(1, math.ceil(max(max(load) for load in held)))


UNBOUNDED_CPUS = 1e9  # CPUs of a node whose count is what shape() finds: GPUs alone decide where bundles go


def campaign_shape(arguments: list[str]) -> tuple[int, int, int]:
    """A campaign's allocation: the most nodes, GPUs and CPUs per node any of its stages needs (they run in turn)."""
    from .stages import read_campaign, split_arguments

    path, overrides = split_arguments(arguments)
    shapes = [shape(stage.command, stage.overrides) for stage in read_campaign(path, overrides).stages]
    return tuple(max(column) for column in zip(*shapes))


def main(argv: list[str]) -> int:
    from .validation import ConfigError

    try:
        command = argv[0] if argv else ""
        print(*(campaign_shape(argv[1:]) if command == "campaign" else shape(command, argv[1:])))
    except ConfigError as error:
        print(f"dpo_ray.slurm: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
