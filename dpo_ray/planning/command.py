"""`dpo-ray plan [train|online] [OVERRIDE ...] [--nodes N ...]`: its usage and arguments (dpo_ray.plan makes the plan;
the CLI prints it, with exit status 0 when it fits, 1 when it does not)."""

from __future__ import annotations

USAGE = """usage: dpo-ray plan [train|online] [OVERRIDE ...] [--nodes N] [--gpus-per-node G] [--gpu-memory-gib M]
                    [--cpus-per-node C] [--memory-gib R]

Composes the configuration `dpo-ray train` (or online) would run, reads the models' config.json only (no weights:
a directory holding just a config will do) and prints where each group's actors land, each actor's memory by part,
and the verdict: fits (exit 0) or does not fit, with the part that overflows and the options that would fix it
(exit 1). With --nodes it plans for N identical nodes (defaults: 8 GPUs of 80 GiB, 128 CPUs, 1024 GiB); without,
for the Ray cluster at cluster.address (or RAY_ADDRESS) when one is named, else for this machine."""

FLAGS = {  # flag -> (dpo_ray.plan's argument, parser); the defaults are the function's
    "--nodes": ("nodes", int),
    "--gpus-per-node": ("gpus_per_node", int),
    "--gpu-memory-gib": ("gpu_memory_gib", float),
    "--cpus-per-node": ("cpus_per_node", float),
    "--memory-gib": ("memory_gib", float),
}


def parse(arguments: list[str]) -> tuple[str, list[str], dict[str, float]]:
    """(command, overrides, dpo_ray.plan's arguments the flags give); a ValueError for a flag without a number."""
    command = arguments[0] if arguments and arguments[0] in ("train", "online") else "train"
    rest = arguments[1:] if arguments and arguments[0] in ("train", "online") else list(arguments)
    flags, overrides, i = {}, [], 0
    while i < len(rest):
        name, _, value = rest[i].partition("=")
        if name in FLAGS:
            if not value:
                if i + 1 == len(rest):
                    raise ValueError(f"{name} needs a number")
                i, value = i + 1, rest[i + 1]
            argument, parser = FLAGS[name]
            try:
                flags[argument] = parser(value)
            except ValueError:
                raise ValueError(f"{name} takes a number, not {value!r}") from None
        elif rest[i].startswith("--"):
            raise ValueError(f"unknown flag {rest[i]} (flags: {', '.join(FLAGS)})")
        else:
            overrides.append(rest[i])
        i += 1
    return command, overrides, flags
