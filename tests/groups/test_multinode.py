"""Two Ray nodes on one machine: STRICT_SPREAD puts the ZeRO-3 ranks on different nodes and trains the same model
as PACK on one node."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from dpo_ray.campaign.inputs import OfflineInputs
from dpo_ray.campaign.offline import OfflineCampaign

from ..conftest import make_pairs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    os.environ["RAY_TMPDIR"] = str(tmp_path_factory.mktemp("ray2"))
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


def train(cfg, model_dir, placement, out):
    cfg.cluster.policy_ranks, cfg.cluster.placement, cfg.output_dir = 2, placement, str(out)
    cfg.train.epochs = 2
    pairs = make_pairs(20, seed=11)
    campaign = OfflineCampaign(cfg, OfflineInputs(model_dir, model_dir, pairs[:16], pairs[16:]))
    return campaign.run()


def test_spread_over_two_nodes_matches_one_node(two_node_cluster, run_config, tiny_model_dir, tmp_path):
    import ray

    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    packed = train(run_config, tiny_model_dir, "PACK", tmp_path / "pack")
    spread = train(run_config, tiny_model_dir, "STRICT_SPREAD", tmp_path / "spread")
    assert len(set(packed.policy_nodes)) == 1 and len(set(spread.policy_nodes)) == 2
    a = load_file(str(packed.final_model / "model.safetensors"))
    b = load_file(str(spread.final_model / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert spread.after["eval_loss"] == pytest.approx(packed.after["eval_loss"], abs=1e-6)
