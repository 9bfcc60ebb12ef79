"""A node whose output_dir is not the driver's: two Ray nodes on this machine, the second started in a mount namespace
of its own where the run's directory is another directory bind-mounted over it (as a node-local disk would be)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dpo_ray.workers.distributed import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare (mounts)"),
]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def split_cluster():
    """(node_local, shared, private): node_local is private on node B (what its ranks write there lands in private),
    shared is the same directory on both nodes. The driver runs on the head."""
    import ray

    root = Path(tempfile.mkdtemp(prefix="split-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    node_local, shared, private = root / "node_local", root / "shared", root / "private"
    for d in (node_local, shared, private):
        d.mkdir()
    port = free_port()
    # One temp dir for the driver and both nodes, and the auth mode this process's Ray already holds (it reads the
    # mode once: a local Ray earlier in the run turned token auth on; with another, the cluster cancels its actors)
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    ours = {"RAY_TMPDIR": str(root / "ray"), "RAY_AUTH_MODE": "token" if is_token_auth_enabled() else "disabled"}
    env = {**os.environ, **ours, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    node = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=2"]
    ray_cli = str(BIN / "ray")
    head = [ray_cli, "start", "--head", f"--port={port}", f"--temp-dir={root}/ray", "--include-dashboard=false"]
    joined = f"exec {ray_cli} start --address=127.0.0.1:{port} {' '.join(node)}"
    second = ["unshare", "-m", "sh", "-c", f"mount --bind {private} {node_local} && {joined}"]
    logs = open(root / "nodes.log", "w")
    started = [
        subprocess.Popen(cmd, env=env, start_new_session=True, stdout=logs, stderr=subprocess.STDOUT)
        for cmd in (head + node, second)
    ]
    before = {name: os.environ.get(name) for name in ours}
    os.environ.update(ours)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
                break
            except Exception:  # the head is still coming up
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.monotonic() < deadline, (root / "nodes.log").read_text()[-3000:]
            time.sleep(1)
        yield node_local, shared, private
    finally:
        ray.shutdown()
        for name, value in before.items():
            os.environ.pop(name, None) if value is None else os.environ.update({name: value})
        for process in started:  # SIGKILL: Ray's graceful stop takes ~30 s and is not what this module tests
            os.killpg(process.pid, signal.SIGKILL)
        for process in started:
            process.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def spread_group():
    """Two bare actors, one on each node."""
    from dpo_ray.groups.actor_group import ActorGroup
    from dpo_ray.schema import ClusterConfig
    from dpo_ray.sizing.resources import GroupNeed

    cluster = ClusterConfig()
    cluster.placement = "STRICT_SPREAD"
    return ActorGroup(GroupNeed("policy", 2, 1.0, 0.0), "builtins.dict", cluster, {})


def test_a_rank_that_writes_output_dir_elsewhere_is_named_and_a_shared_directory_passes(split_cluster):
    import ray

    from dpo_ray.groups.shared_dirs import NotShared, check_shared

    node_local, shared, private = split_cluster
    group = spread_group()
    try:
        check_shared(group, {"output_dir": str(shared / "run"), "cache_dir": str(shared / "cache")})
        with pytest.raises(NotShared, match=rf"output_dir={node_local}/run: what policy rank [01] on node ") as error:
            check_shared(group, {"output_dir": str(node_local / "run"), "cache_dir": str(shared / "cache")})
        here = ray.get_runtime_context().get_node_id()
        node_b = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != here)
        rank_part, driver_part = str(error.value).split("writes there, the driver")
        assert f"Ray node {node_b[:8]})" in rank_part and f"Ray node {here[:8]})" in driver_part.split("does not")[0]
        assert "cache_dir" not in str(error.value).split("Not shared")[0]  # cache_dir is shared
    finally:
        group.shutdown()
    # the tokens are gone on both sides: the driver's directories and node B's own
    assert [list(d.iterdir()) for d in (shared / "run", shared / "cache", node_local / "run", private / "run")] == [
        [],
        [],
        [],
        [],
    ]


def test_a_policy_group_on_a_node_local_output_dir_stops_before_loading_its_model(split_cluster, tmp_path):
    """The model path does not exist: a group that got as far as loading would fail on it, not on the directory."""
    import ray

    from dpo_ray.groups.policy_group import PolicyGroup
    from dpo_ray.groups.shared_dirs import NotShared
    from dpo_ray.schema import RunConfig
    from dpo_ray.workers.device import device_spec, rank_env

    node_local, shared, _ = split_cluster
    cfg = RunConfig()
    cfg.output_dir, cfg.cache_dir = str(node_local / "run"), str(shared / "cache")
    cfg.cluster.policy_ranks, cfg.cluster.placement, cfg.cluster.cpus_per_rank = 2, "STRICT_SPREAD", 1.0
    with pytest.raises(NotShared, match="output_dir=.*: output_dir must be one file system mounted at the same path"):
        PolicyGroup(cfg, str(tmp_path / "no-model"), 1, 1, rank_env(device_spec(0), threads=1))
    time.sleep(1)  # the group's placement goes back to the pool asynchronously
    assert ray.available_resources().get("CPU") == 4
