"""Two Ray nodes on one machine: STRICT_SPREAD puts the ZeRO ranks on different nodes and trains the same model as
PACK on one node; a node lost mid-run stops the run, and the same command resumes on the node left."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from dpo_ray.campaign.inputs import OfflineInputs
from dpo_ray.campaign.offline import OfflineCampaign
from dpo_ray.groups.failures import NoCapacity

from ..conftest import exact_config, make_pairs, short_ray_tmpdir

pytestmark = pytest.mark.slow
PAIRS = make_pairs(48, seed=11)  # 40 to train on: 5 steps of 8 pairs per epoch, 10 in all


@pytest.fixture(scope="module")
def two_node_cluster():
    import ray
    from ray.cluster_utils import Cluster

    with short_ray_tmpdir():
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 2, "include_dashboard": False, "object_store_memory": 256 << 20},
        )
        cluster.add_node(num_cpus=2, object_store_memory=256 << 20)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
        ray.shutdown()
        cluster.shutdown()


def configure(cfg, placement, out, ranks=2):
    cfg.cluster.policy_ranks, cfg.cluster.placement, cfg.output_dir = ranks, placement, str(out)
    cfg.cluster.reuse_rank_processes = False  # each run's groups placed on the nodes as a run alone sees them
    cfg.train.epochs, cfg.train.checkpoint_every, cfg.train.keep_checkpoints = 2, 2, 2
    return cfg


def train(cfg, model_dir):
    return OfflineCampaign(cfg, OfflineInputs(model_dir, model_dir, PAIRS[:40], PAIRS[40:])).run()


def step_losses(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def weights(result) -> dict[str, torch.Tensor]:
    return load_file(str(result.final_model / "model.safetensors"))


@pytest.fixture(scope="module")
def spread_run(two_node_cluster, tiny_model_dir, tmp_path_factory):
    """The uninterrupted run with its 2 ranks on the 2 nodes: its final weights and each step's loss."""
    out = tmp_path_factory.mktemp("spread")
    result = train(configure(exact_config(out), "STRICT_SPREAD", out / "run"), tiny_model_dir)
    return result, step_losses(out / "run")


def test_spread_over_two_nodes_matches_one_node(two_node_cluster, spread_run, run_config, tiny_model_dir, tmp_path):
    import ray

    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    deadline = time.monotonic() + 30  # the spread run's actors give their CPUs back (PACK spreads when one is busy)
    while ray.available_resources().get("CPU", 0) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    packed = train(configure(run_config, "PACK", tmp_path / "pack"), tiny_model_dir)
    spread = spread_run[0]
    assert len(set(packed.policy_nodes)) == 1 and len(set(spread.policy_nodes)) == 2
    a, b = weights(packed), weights(spread)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert spread.after["eval_loss"] == pytest.approx(packed.after["eval_loss"], abs=1e-6)


def second_node(cluster):
    """The cluster's second node, added again if a test before removed it."""
    import ray

    if len([n for n in ray.nodes() if n["Alive"]]) < 2:
        cluster.add_node(num_cpus=2, object_store_memory=256 << 20)
        cluster.wait_for_nodes()
    return next(iter(cluster.worker_nodes))


def remove_after_first_checkpoint(cluster, node, run_dir, removed: list):
    """A thread that removes node once the run's first checkpoint is complete (as a preemption would)."""

    def remove():
        pointer = run_dir / "checkpoints" / "latest"
        while not pointer.exists():
            time.sleep(0.05)
        cluster.remove_node(node)
        removed.append(pointer.read_text())

    thread = threading.Thread(target=remove, daemon=True)
    thread.start()
    return thread


LOST = r"ActorDiedError: policy\.\w+: rank [01] of 2 lost; .*ip: [\d.]+; the actor's node was terminated"


def test_a_lost_node_stops_the_run_naming_the_rank_and_what_it_waited_for(
    two_node_cluster, run_config, tiny_model_dir, tmp_path
):
    """A preemptible node disappears after the first checkpoint: the dead rank is named, the restart waits
    cluster.nodes_wait_s for a second node and stops saying what it waited for and how to go on, with nothing of the
    run left on the cluster (a checkpoint written by 2 ranks resumes on 1: test_recovery.py)."""
    import ray
    from ray.util import placement_group_table

    cluster = two_node_cluster
    run_dir, removed = tmp_path / "lost", []
    cfg = configure(run_config, "STRICT_SPREAD", run_dir)
    cfg.cluster.nodes_wait_s = 3
    remover = remove_after_first_checkpoint(cluster, second_node(cluster), run_dir, removed)
    began = time.perf_counter()
    with pytest.raises(NoCapacity, match=r"policy group: 2 x .* STRICT_SPREAD placement did not fit .* within 3s") as e:
        train(cfg, tiny_model_dir)
    stopped_after = time.perf_counter() - began
    remover.join(timeout=30)
    assert removed
    assert "cluster.policy_ranks" in str(e.value) and "cluster.min_policy_ranks" in str(e.value)  # how to go on
    assert re.search(f"while restarting after {LOST}", str(e.value.__notes__))  # the rank, its node, what happened
    log = (run_dir / "driver.log").read_text()
    assert re.search(f"attempt 1 failed \\({LOST}", log), log[-3000:]
    assert all(row["state"] == "REMOVED" for row in placement_group_table().values())
    assert len([n for n in ray.nodes() if n["Alive"]]) == 1
    print(f"lost node: stopped {stopped_after:.1f}s after the start")


def test_with_min_policy_ranks_a_run_goes_on_by_itself_on_the_node_left(
    two_node_cluster, spread_run, run_config, tiny_model_dir, tmp_path
):
    """cluster.min_policy_ranks=1: the node lost after the first checkpoint, the run waits nodes_wait_s, then goes on
    with 1 rank from that checkpoint (2 ranks -> 1) and ends where the uninterrupted run did, within fp32 reduction
    order (SGD: measured 1.2e-7); every step is logged once, and the restarts say what happened."""
    cluster = two_node_cluster
    run_dir, removed = tmp_path / "shrunk", []
    cfg = configure(run_config, "STRICT_SPREAD", run_dir)
    cfg.cluster.nodes_wait_s, cfg.cluster.min_policy_ranks = 3, 1
    remover = remove_after_first_checkpoint(cluster, second_node(cluster), run_dir, removed)
    began = time.perf_counter()
    result = train(cfg, tiny_model_dir)
    seconds = time.perf_counter() - began
    remover.join(timeout=30)
    assert removed and len(set(result.policy_nodes)) == 1 and len(result.policy_nodes) == 1
    assert [r["error"].split(":")[0] for r in result.restarts] == ["ActorDiedError", "NoCapacity"], result.restarts
    assert re.search(LOST, result.restarts[0]["error"])
    assert "going on with 1 from the latest checkpoint" in (run_dir / "driver.log").read_text()
    assert result.resumed_from is not None and int(result.resumed_from.split("_")[1]) >= 2
    expected_result, expected_losses = spread_run
    losses = step_losses(run_dir)
    assert sorted(losses) == list(range(1, 11))  # every step once
    assert all(abs(losses[s] - expected_losses[s]) < 1e-5 for s in losses), (losses, expected_losses)
    final, expected = weights(result), weights(expected_result)
    worst = max((final[k] - expected[k]).abs().max().item() for k in expected)
    assert worst < 1e-5, worst
    print(f"lost node, min_policy_ranks=1: {seconds:.1f}s in all, resumed from {result.resumed_from}, {worst=:.1e}")
