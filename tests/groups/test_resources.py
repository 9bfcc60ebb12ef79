"""Group sizes are checked against the cluster's nodes before any actor starts."""

from __future__ import annotations

import pytest

from dpo_ray.compose import compose
from dpo_ray.groups.resources import GroupNeed, check_fit

NODE = {"CPU": 64.0, "GPU": 8.0}


def test_groups_that_fit_pass_and_the_shortfall_is_named():
    needs = [GroupNeed("policy", 8, 4, 1), GroupNeed("reference", 4, 4, 1), GroupNeed("rollout", 2, 4, 2)]
    check_fit(needs, [NODE, NODE], "PACK")
    with pytest.raises(
        ValueError,
        match=r"the groups need 16 GPU \(policy 8 x 1, reference 4 x 1, rollout 2 x 2\) "
        r"but the Ray cluster has 8: short by 8",
    ):
        check_fit(needs, [NODE], "PACK")


def test_a_rank_no_node_can_hold_and_strict_strategies_are_errors():
    with pytest.raises(ValueError, match=r"rollout group: no node has \{'CPU': 1, 'GPU': 16\}"):
        check_fit([GroupNeed("rollout", 1, 1, 16)], [NODE, NODE], "PACK")
    with pytest.raises(ValueError, match="policy group: STRICT_SPREAD needs 3 nodes"):
        check_fit([GroupNeed("policy", 3, 1, 1)], [NODE, NODE], "STRICT_SPREAD")
    with pytest.raises(ValueError, match="policy group: STRICT_PACK needs one node with 12 x"):
        check_fit([GroupNeed("policy", 12, 1, 1)], [NODE, NODE], "STRICT_PACK")
    with pytest.raises(ValueError, match="cluster.nodes=4, but the Ray cluster has 2 alive node"):
        check_fit([GroupNeed("policy", 1, 1, 0)], [NODE, NODE], "PACK", expected_nodes=4)


@pytest.mark.parametrize("preset, nodes", [("single_node_8gpu", 1), ("multi_node", 4)])
def test_gpu_presets_fill_their_cluster_exactly(preset, nodes):
    from dpo_ray.groups.resources import group_needs

    cfg = compose([f"cluster={preset}", "reward.model_path=/models/rm"], "online")
    needs = group_needs(cfg, reference=True, online=True)
    check_fit(needs, [NODE] * nodes, cfg.cluster.placement, cfg.cluster.nodes)
    assert sum(n.size * n.gpus for n in needs) == 8 * nodes
    with pytest.raises(ValueError, match="short by"):
        check_fit(needs, [{"CPU": 64.0, "GPU": 7.0}] * nodes, cfg.cluster.placement)


def test_the_slurm_shape_of_a_run_comes_from_its_config():
    from dpo_ray.slurm import shape

    # 16 policy, 4 reference, 4 x 2 rollout and 4 reward GPUs, and 4 CPUs each of those 28 actors, over 4 nodes
    assert shape("online", ["cluster=multi_node", "reward.model_path=/models/rm"]) == (4, 8, 28)
    # offline, the policy scores its own reference: no reference group
    assert shape("train", ["cluster=single_node_8gpu"]) == (1, 4, 16)
    # with one, it finishes before the policy starts: the larger of the two counts
    assert shape("train", ["cluster=single_node_8gpu", "reference.from_policy=false"]) == (1, 4, 16)
    assert shape("online", []) == (1, 0, 2 + 2 + 2 + 1)  # the embedded recipe: ranks of 1 CPU, a 2-CPU engine


def test_the_slurm_shape_refuses_a_bad_option_before_anything_is_queued(capsys):
    from dpo_ray.slurm import main

    assert main(["online", "cluster.gpus_per_rank=0.5"]) == 2
    assert "cluster.gpus_per_rank=0.5: must be 0 or a whole number" in capsys.readouterr().err
    assert main(["serve"]) == 2 and "command 'serve': must be one of train, online" in capsys.readouterr().err
