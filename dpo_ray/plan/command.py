"""`dpo-ray plan [train|online] [OVERRIDE ...] [--nodes N ...]`: the plan of the run those options describe, printed;
exit status 0 when it fits, 1 when it does not."""

from __future__ import annotations

import os

USAGE = """usage: dpo-ray plan [train|online] [OVERRIDE ...] [--nodes N] [--gpus-per-node G] [--gpu-memory-gib M]
                    [--cpus-per-node C] [--memory-gib R]

Composes the configuration `dpo-ray train` (or online) would run, reads the models' config.json only (no weights:
a directory holding just a config will do) and prints where each group's actors land, each actor's memory by part,
and the verdict: fits (exit 0) or does not fit, with the part that overflows and the options that would fix it
(exit 1). With --nodes it plans for N identical nodes (defaults: 8 GPUs of 80 GiB, 128 CPUs, 1024 GiB); without,
for the Ray cluster at cluster.address (or RAY_ADDRESS) when one is named, else for this machine."""

FLAGS = {  # flag -> (default, parser)
    "--nodes": (0, int),
    "--gpus-per-node": (8, int),
    "--gpu-memory-gib": (80.0, float),
    "--cpus-per-node": (128.0, float),
    "--memory-gib": (1024.0, float),
}


def parse(arguments: list[str]) -> tuple[str, list[str], dict[str, float]]:
    """(command, overrides, flags); a ValueError for a flag without a number."""
    command = arguments[0] if arguments and arguments[0] in ("train", "online") else "train"
    rest = arguments[1:] if arguments and arguments[0] in ("train", "online") else list(arguments)
    flags = {name: default for name, (default, _) in FLAGS.items()}
    overrides, i = [], 0
    while i < len(rest):
        name, _, value = rest[i].partition("=")
        if name in FLAGS:
            if not value:
                if i + 1 == len(rest):
                    raise ValueError(f"{name} needs a number")
                i, value = i + 1, rest[i + 1]
            try:
                flags[name] = FLAGS[name][1](value)
            except ValueError:
                raise ValueError(f"{name} takes a number, not {value!r}") from None
        elif rest[i].startswith("--"):
            raise ValueError(f"unknown flag {rest[i]} (flags: {', '.join(FLAGS)})")
        else:
            overrides.append(rest[i])
        i += 1
    return command, overrides, flags


def plan_command(arguments: list[str]) -> int:
    from ..campaign.hub_models import resolve_hub_models
    from ..campaign.preflight import check_reward_function
    from ..compose import compose
    from ..groups.resources import group_needs, local_cpus, reference_group_needed
    from .nodes import described_nodes, ray_nodes, this_machine
    from .plan import make_plan, plan_models, render

    command, overrides, flags = parse(arguments)
    cfg = compose(overrides, command)
    resolve_hub_models(cfg, config_only=True)  # a plan reads config.json alone
    if command == "online":
        check_reward_function(cfg)  # as the run would, before it plans anything
    models = plan_models(cfg, command)
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS", "")
    if flags["--nodes"]:
        nodes = described_nodes(
            flags["--nodes"],
            flags["--gpus-per-node"],
            flags["--gpu-memory-gib"],
            flags["--cpus-per-node"],
            flags["--memory-gib"],
        )
        source = "as described by --nodes"
    elif address:
        import ray

        ray.init(address=address, log_to_driver=False)
        nodes, source = ray_nodes(), f"the Ray cluster at {address}"
        ray.shutdown()
    else:
        online = command == "online"
        needs = group_needs(cfg, reference_group_needed(cfg, online), online)
        nodes, source = this_machine(local_cpus(needs, online, os.cpu_count() or 1)), "this machine, a local Ray"
    plan = make_plan(cfg, command, nodes, models, source)
    print(render(plan))
    return 0 if plan.fits else 1
