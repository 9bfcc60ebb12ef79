"""Group sizes are checked against the cluster's nodes before any actor starts."""

from __future__ import annotations

import pytest

from dpo_ray.compose import compose
from dpo_ray.sizing.resources import GroupNeed, check_fit

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
    from dpo_ray.sizing.resources import group_needs

    cfg = compose([f"cluster={preset}", "reward.model_path=/models/rm"], "online")
    needs = group_needs(cfg, reference=True, online=True)
    check_fit(needs, [NODE] * nodes, cfg.cluster.placement, cfg.cluster.nodes)
    assert sum(n.size * n.gpus for n in needs) == 8 * nodes
    with pytest.raises(ValueError, match="short by"):
        check_fit(needs, [{"CPU": 64.0, "GPU": 7.0}] * nodes, cfg.cluster.placement)


def test_the_slurm_shape_of_a_run_comes_from_its_config():
    from dpo_ray.slurm import shape

    # 16 policy, 4 reference, 4 x 2 rollout and 4 reward GPUs, and 4 CPUs each of those 28 actors, over 4 nodes:
    # 112 CPUs, but a node of 8 policy ranks holds 32 of them
    assert shape("online", ["cluster=multi_node", "reward.model_path=/models/rm"]) == (4, 8, 32)
    # the 70B preset: 8 policy ranks of 12 CPUs on a node; offline its 16 ranks take 4 GPUs of each node
    assert shape("online", ["cluster=multi_node_70b", "reward.fn=os.path:join"]) == (4, 8, 96)
    assert shape("train", ["cluster=multi_node_70b"]) == (4, 4, 48)
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


def test_placement_follows_rays_scheduler_emptiest_node_first():
    from dpo_ray.sizing.resources import place_groups

    nodes = [{"CPU": 16.0, "GPU": 8.0}, {"CPU": 16.0, "GPU": 8.0}, {"CPU": 16.0, "GPU": 4.0}]
    needs = [GroupNeed("rollout", 1, 4, 2), GroupNeed("reference", 2, 1, 1), GroupNeed("policy", 10, 1, 1)]
    # PACK: each group starts on the node whose free share after one bundle is largest (summed over CPU and GPU),
    # then fills it before the next. The engine takes node 0 (a tie: the first); the reference node 1 (15/16 + 7/8
    # against node 0's 11/12 + 5/6); the policy node 1's 6 GPUs (13/14 + 5/6 beats 11/12 + 5/6), then node 0
    assert place_groups(needs, nodes, "PACK", concurrent=True) == [[0], [1, 1], [1] * 6 + [0] * 4]
    # offline the groups do not overlap: each starts on empty nodes
    assert place_groups(needs, nodes, "PACK", concurrent=False) == [[0], [0, 0], [0] * 8 + [1] * 2]
    assert place_groups([GroupNeed("policy", 4, 1, 1)], nodes, "SPREAD", True) == [[0, 1, 2, 0]]
    assert place_groups([GroupNeed("policy", 3, 1, 1)], nodes, "STRICT_SPREAD", True) == [[0, 1, 2]]
    assert place_groups([GroupNeed("policy", 2, 1, 2)], nodes[2:] + nodes[:1], "STRICT_PACK", True) == [[1, 1]]


def test_groups_whose_totals_fit_but_whose_bundles_do_not_divide_among_the_nodes_are_refused():
    nodes = [{"CPU": 16.0, "GPU": 8.0}, {"CPU": 16.0, "GPU": 8.0}]
    needs = [GroupNeed("rollout", 3, 1, 3), GroupNeed("policy", 1, 1, 6)]  # 9 + 6 of 16 GPUs; 2 and 5 left after
    with pytest.raises(ValueError, match=r"policy group: 1 x \{'CPU': 1, 'GPU': 6\} with PACK placement do not fit"):
        check_fit(needs, nodes, "PACK")


def test_a_judge_is_sized_like_the_reward_group_and_replaces_it_unless_the_task_evaluates_with_its_own():
    from dpo_ray.sizing.resources import group_needs

    def names(*overrides):
        cfg = compose(["cluster=single_node_8gpu", *overrides], "online")
        return {n.name: (n.size, n.cpus, n.gpus) for n in group_needs(cfg, reference=True, online=True)}

    rm = names("reward.model_path=/models/rm")
    own = names("model.path=/models/policy", "online.prompt_files=[p.jsonl]", "reward.judge_model=/models/judge")
    assert own["judge"] == rm["reward"] and "reward" not in own  # no task reward: nothing else scores answers
    task = names("online.prompt_task=imdb", "model.path=/models/policy", "reward.judge_model=/models/judge")
    assert task["judge"] == rm["reward"] and task["reward"][2] == 0  # VADER, a rule, evaluates the held-out answers
    assert names("reward.judge_fn=m:f")["judge"][2] == 0  # a judge function takes no GPU


def test_a_tensor_parallel_judge_takes_its_gpus_in_one_bundle_and_its_engine_runs_their_workers_apart():
    from dpo_ray.groups.judge_group import judge_engine
    from dpo_ray.sizing.resources import judge_need
    from dpo_ray.validation import ConfigError
    from dpo_ray.workers.engine_args import engine_args, separate_process

    judged = ["cluster=single_node_8gpu", "model.path=/models/policy", "online.prompt_files=[p.jsonl]"]
    cfg = compose([*judged, "reward.judge_model=/models/judge-70b", "reward.judge_tensor_parallel_size=4"], "online")
    need = judge_need(cfg)
    assert (need.size, need.gpus) == (cfg.cluster.reward_ranks, 4.0)
    engine = judge_engine(cfg)
    assert engine.tensor_parallel_size == 4 and cfg.rollout.tensor_parallel_size == 1  # the rollout's own is kept
    args = engine_args(engine, need.gpus, "bfloat16", 2816, 0, 0)
    assert args["tensor_parallel_size"] == 4 and args["distributed_executor_backend"] == "mp"
    assert separate_process(engine, need.gpus)
    with pytest.raises(ConfigError, match="reward.judge_tensor_parallel_size=2\\) runs its workers in processes"):
        compose(
            [
                *judged,
                "reward.judge_model=/m/j",
                "reward.judge_tensor_parallel_size=2",
                "rollout.engine_process=inline",
            ],
            "online",
        )


def test_reference_ranks_reserve_their_own_cpus_or_the_policy_ranks():
    from dpo_ray.sizing.resources import policy_need, reference_need

    cfg = compose(["cluster.cpus_per_rank=12", "cluster.reference_cpus=4"], "train")
    assert (policy_need(cfg).cpus, reference_need(cfg).cpus) == (12.0, 4.0)
    cfg = compose(["cluster.cpus_per_rank=12"], "train")
    assert reference_need(cfg).cpus == 12.0
