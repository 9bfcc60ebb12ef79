"""Whether a group's ranks see the run's directories as the driver does. On a cluster, output_dir and cache_dir must
be one file system mounted at the same path on every node: each rank writes its shards there, the driver its
manifests, pointers and renames, and rank 0 the final model. A node-local directory loses a run silently (shards on
one node, manifests on another; a resume that fails on every node), so it is checked before any model loads."""

from __future__ import annotations

import secrets
from pathlib import Path


class NotShared(RuntimeError):
    """A directory the run writes is not the one the driver sees on some rank's node."""


def run_directories(cfg) -> dict[str, str]:
    """The directories every rank of the policy and reference groups writes into or reads from, by option."""
    return {"output_dir": cfg.output_dir, "cache_dir": cfg.cache_dir}


def token_name(nonce: str, rank: int) -> str:
    return f".dpo-ray-shared-{nonce}-{rank}"


def leave_token(directories: list[str], name: str) -> str:
    """On a rank: write a file named name into each directory; returns its node (address, host name, Ray node id)."""
    for directory in directories:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / name).write_text(name)
    return this_node()


def this_node() -> str:
    import socket

    import ray

    from ..workers.distributed import node_address

    return f"{node_address()} ({socket.gethostname()}, Ray node {ray.get_runtime_context().get_node_id()[:8]})"


def take_token(directories: list[str], name: str) -> None:
    for directory in directories:
        (Path(directory) / name).unlink(missing_ok=True)


def require_shared(group, cfg) -> None:
    """check_shared for the run's directories; a group that fails it is shut down (the caller never gets it)."""
    try:
        check_shared(group, run_directories(cfg))
    except BaseException:
        group.shutdown()
        raise


def check_shared(group, directories: dict[str, str]) -> None:
    """Every rank of group leaves a token in each directory (by option name), and the driver must see them all;
    raises NotShared naming the option, the directory, the rank and its node, and the way out."""
    from .actor_group import gather

    nonce, paths = secrets.token_hex(6), list(directories.values())
    names = [token_name(nonce, rank) for rank in range(group.size)]
    left = [a.leave_token.remote(paths, name) for a, name in zip(group.actors, names)]
    nodes = gather(left, group.call_timeout_s, f"{group.name}: a token in the run's directories")
    missing = [
        (option, directory, rank, node)
        for option, directory in directories.items()
        for rank, (name, node) in enumerate(zip(names, nodes))
        if not (Path(directory) / name).exists()
    ]
    taken = [a.take_token.remote(paths, name) for a, name in zip(group.actors, names)]
    gather(taken, group.call_timeout_s, f"{group.name}: the tokens taken back")
    if missing:
        option, directory, rank, node = missing[0]
        ranks = sorted({f"{r} on {n}" for _, _, r, n in missing})
        raise NotShared(
            f"{option}={directory}: what {group.name} rank {rank} on node {node} writes there, the driver (on "
            f"{this_node()}) does not see: {option} must be one file system mounted at the same path on every "
            f"node (NFS, Lustre, a shared volume); give {option} a directory on it. Not shared with the driver: "
            f"{group.name} ranks {', '.join(ranks[:8])}"
        )
