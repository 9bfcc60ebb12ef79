"""`python -m dpo_ray.slurm COMMAND [OVERRIDE ...]` prints the Slurm shape a run needs, "NODES GPUS_PER_NODE", for
launch/slurm/submit.sh to pass to sbatch (--nodes, --gres=gpu:N)."""

from __future__ import annotations

import math
import sys


def shape(command: str, overrides: list[str]) -> tuple[int, int]:
    """Nodes (cluster.nodes, at least 1) and GPUs per node: the most GPUs the run's groups hold at once, spread
    evenly."""
    from .cli import compose
    from .groups.resources import group_needs

    if command not in ("train", "online"):
        raise ValueError(f"command must be train or online, got {command!r}")
    cfg = compose(overrides, command)
    needs = group_needs(cfg, reference=True, online=command == "online")
    gpus = [n.size * n.gpus for n in needs]
    # Offline runs finish the reference before the policy starts; online groups all live at once.
    total = sum(gpus) if command == "online" else max(gpus)
    nodes = max(1, cfg.cluster.nodes)
    return nodes, math.ceil(total / nodes)


if __name__ == "__main__":
    print(*shape(sys.argv[1], sys.argv[2:]))
