"""Two Ray nodes on one machine: STRICT_SPREAD puts the ZeRO ranks on different nodes and trains the same model as
PACK on one node; a node lost mid-run stops the run, and the same command resumes on the node left."""

from __future__ import annotations

import json
import os
import re
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from dpo_ray.campaign.inputs import OfflineInputs
from dpo_ray.campaign.offline import OfflineCampaign
from dpo_ray.groups.failures import NoCapacity

from ..conftest import exact_config, make_pairs

pytestmark = pytest.mark.slow
PAIRS = make_pairs(48, seed=11)  # 40 to train on: 5 steps of 8 pairs per epoch, 10 in all


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    os.environ["RAY_TMPDIR"] = str(tmp_path_factory.mktemp("ray2"))
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False, "object_store_memory": 256 << 20},
    )
    worker = cluster.add_node(num_cpus=2, object_store_memory=256 << 20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


def configure(cfg, placement, out, ranks=2):
    cfg.cluster.policy_ranks, cfg.cluster.placement, cfg.output_dir = ranks, placement, str(out)
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


def test_a_lost_node_stops_the_run_and_the_same_command_resumes_on_the_node_left(
    two_node_cluster, spread_run, run_config, tiny_model_dir, tmp_path
):
    """A preemptible node disappears after the first checkpoint: the dead rank is named, the restart waits
    cluster.nodes_wait_s for a second node and stops saying what it waited for, with nothing of the run left on the
    cluster; the command rerun with the ranks the node left holds resumes from the checkpoint (2 ranks -> 1) and ends
    where the uninterrupted run did, within fp32 reduction order (SGD: measured 1e-7)."""
    import ray
    from ray.util import placement_group_table

    cluster, worker = two_node_cluster
    run_dir = tmp_path / "lost"
    cfg = configure(run_config, "STRICT_SPREAD", run_dir)
    cfg.cluster.nodes_wait_s = 3
    lost = []

    def remove_node_after_first_checkpoint():
        pointer = run_dir / "checkpoints" / "latest"
        while not pointer.exists():
            time.sleep(0.05)
        cluster.remove_node(worker)
        lost.append(pointer.read_text())

    remover = threading.Thread(target=remove_node_after_first_checkpoint, daemon=True)
    remover.start()
    began = time.perf_counter()
    with pytest.raises(NoCapacity, match=r"policy group: 2 x .* STRICT_SPREAD placement did not fit .* within 3s") as e:
        train(cfg, tiny_model_dir)
    stopped_after = time.perf_counter() - began
    remover.join(timeout=30)
    assert lost
    assert "cluster.policy_ranks" in str(e.value)  # how to go on with the node left
    named = r"ActorDiedError: policy\.\w+: rank [01] of 2 lost; .*ip: [\d.]+; the actor's node was terminated"
    assert re.search(f"while restarting after {named}", str(e.value.__notes__))  # the rank, its node, what happened
    log = (run_dir / "driver.log").read_text()
    assert re.search(f"attempt 1 failed \\({named}", log), log[-3000:]
    assert all(row["state"] == "REMOVED" for row in placement_group_table().values())
    assert len([n for n in ray.nodes() if n["Alive"]]) == 1

    resumed = train(configure(exact_config(tmp_path), "STRICT_SPREAD", run_dir, ranks=1), tiny_model_dir)
    assert resumed.resumed_from is not None and int(resumed.resumed_from.split("_")[1]) >= 2
    expected_result, expected_losses = spread_run
    losses = step_losses(run_dir)
    assert sorted(losses) == list(range(1, 11))  # every step once
    assert all(abs(losses[s] - expected_losses[s]) < 1e-5 for s in losses), (losses, expected_losses)
    final, expected = weights(resumed), weights(expected_result)
    worst = max((final[k] - expected[k]).abs().max().item() for k in expected)
    assert worst < 1e-5, worst
    print(f"lost node: stopped {stopped_after:.1f}s after the start, resumed from {resumed.resumed_from}, {worst=:.1e}")
