"""`dpo-ray plan`: a 70B run planned from a config.json alone, the GPU presets planned for their stated model sizes,
and the placement the plan predicts made for real by Ray on a cluster of fake GPU nodes."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from dpo_ray.cli import main
from dpo_ray.compose import compose
from dpo_ray.planning.nodes import described_nodes, ray_nodes
from dpo_ray.planning.plan import PlanModels, make_plan

from ..conftest import short_ray_tmpdir
from ..sizing.test_memory_estimate import LLAMA_8B, LLAMA_70B, config_dir

LLAMA_13B = dict(
    LLAMA_70B,
    hidden_size=5120,
    intermediate_size=13824,
    num_attention_heads=40,
    num_key_value_heads=40,
    num_hidden_layers=40,
    vocab_size=32000,
    max_position_embeddings=4096,
)
REWARD_8B = dict(LLAMA_8B, architectures=["LlamaForSequenceClassification"], num_labels=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("configs")
    shapes = {"8b": LLAMA_8B, "13b": LLAMA_13B, "70b": LLAMA_70B, "rm-8b": REWARD_8B}
    return {name: config_dir(root, name, config) for name, config in shapes.items()}


def plan(capsys, *arguments) -> tuple[int, str]:
    status = main(["plan", *arguments])
    return status, capsys.readouterr().out


def test_a_70b_reference_replica_does_not_fit_80gb_and_sharded_it_does(models, capsys):
    run = ["train", f"model.path={models['70b']}", "cluster=multi_node_70b", "reference.from_policy=false"]
    status, out = plan(capsys, *run, "reference.sharding=replicas", "--nodes", "4")
    assert status == 1
    verdict = out[out.index("verdict:") :]
    assert verdict.startswith("verdict: does not fit\n  reference: ")
    assert "(largest part: weights, 131.4 GiB)" in verdict  # 70.55B parameters in bf16
    assert "reference.sharding=zero3" in verdict  # what would fix it
    status, out = plan(capsys, *run, "--nodes=4")  # the preset's zero3: 8 ranks of 16.4 GiB of weights each
    assert status == 0 and "verdict: fits" in out
    assert "reference   8 x {CPU: 4, GPU: 1}  zero3; node0: ranks 0-7 (GPUs 0-7)" in out


def test_a_bad_flag_is_a_usage_error(models, capsys):
    assert main(["plan", f"model.path={models['8b']}", "--nodes", "two"]) == 2
    assert "--nodes takes a number, not 'two'" in capsys.readouterr().err
    assert main(["plan", f"model.path={models['8b']}", "--gpus", "8"]) == 2
    assert "unknown flag --gpus" in capsys.readouterr().err


# Each GPU preset with the model size its comment states.
PRESETS = [("single_node_8gpu", "8b", 1), ("multi_node", "13b", 4), ("multi_node_70b", "70b", 4)]


def reward_option(preset: str, models: dict) -> str:
    """A reward model on its GPUs, but a rule for the 70B preset (its 32 GPUs go to policy, reference and engine)."""
    return "reward.fn=os.path:join" if preset == "multi_node_70b" else f"reward.model_path={models['rm-8b']}"


@pytest.mark.parametrize("command", ["train", "online"])
@pytest.mark.parametrize("preset, model, nodes", PRESETS)
def test_gpu_presets_plan_cleanly_for_their_stated_model_sizes(models, capsys, preset, model, nodes, command):
    reward = reward_option(preset, models)
    status, out = plan(capsys, command, f"model.path={models[model]}", f"cluster={preset}", reward, f"--nodes={nodes}")
    assert status == 0, out
    assert "verdict: fits" in out


def test_a_model_that_does_not_fit_names_the_part_and_the_options_that_fit(models, capsys):
    status, out = plan(capsys, "train", f"model.path={models['13b']}", "cluster=multi_node", "--nodes=4")
    assert status == 0  # ZeRO-3 with 35.6 GiB of activations at micro-batch 4
    status, out = plan(
        capsys, "train", f"model.path={models['13b']}", "cluster=multi_node", "deepspeed.zero_stage=2", "--nodes=4"
    )
    assert status == 1
    assert "policy: 86.4 GiB per GPU of 80.0 GiB (largest part: activations, 35.6 GiB)" in out
    assert "model.gradient_checkpointing=true (49.9 GiB per GPU)" in out


def test_a_70b_run_at_32k_tokens_names_sequence_parallelism_as_the_fix(models, capsys):
    """32 policy ranks on 8 x 8 GPUs of 80 GB, a 32768-token pair: with gradient checkpointing each layer's input is
    kept for 80 layers of 2 x 32768 tokens (80 GiB in bf16), which no ZeRO stage divides; 2 ranks sharing each
    sequence halve it."""
    run = [
        "train",
        f"model.path={models['70b']}",
        "cluster=multi_node_70b",
        "cluster.nodes=8",
        "cluster.policy_ranks=32",
        "data.max_length=32768",
        "--nodes=8",
        "--memory-gib=2048",
    ]
    status, out = plan(capsys, *run)
    assert status == 1
    verdict = out[out.index("verdict:") :]
    assert "policy: 126.4 GiB per GPU of 80.0 GiB (largest part: activations, 103.4 GiB)" in verdict
    assert "cluster.sequence_parallel_size=2 (71.4 GiB per GPU, 32 GPUs for the group)" in verdict
    status, out = plan(capsys, *run, "cluster.sequence_parallel_size=2")
    assert status == 0, out
    assert "activations 52.19 + log-prob chunk 1.25 + sequence all-to-all 2.25" in out


def test_sequence_parallelism_needs_an_equal_share_of_the_heads_on_every_rank(models, capsys, tmp_path):
    """Llama-3-8B has 32 attention and 8 key-value heads: 3 ranks cannot share them. The plan says which sizes can,
    among those that divide the policy ranks; a run stops there even with cluster.memory_check=false."""
    from dpo_ray.planning.plan import unrunnable

    run = ["train", f"model.path={models['8b']}", "cluster=single_node_8gpu", "cluster.policy_ranks=6", "--nodes=1"]
    status, out = plan(capsys, *run, "cluster.sequence_parallel_size=3")
    assert status == 1
    assert (
        "sequence parallelism: cluster.sequence_parallel_size=3 does not divide the model's 32 attention heads and 8 "
        "key-value heads" in out
    )
    assert "would fit with: cluster.sequence_parallel_size=2" in out
    overrides = [f"model.path={models['8b']}", "cluster=single_node_8gpu", "cluster.policy_ranks=3"]
    cfg = compose([*overrides, "cluster.sequence_parallel_size=3", "cluster.memory_check=false"], "train")
    nodes = described_nodes(1, 8, 80, 128, 1024)
    why = unrunnable(make_plan(cfg, "train", nodes, PlanModels(models["8b"], models["8b"]), "--nodes"))
    assert why == (  # what check_plan raises before any actor starts, whatever cluster.memory_check says
        "cluster.sequence_parallel_size=3 does not divide the model's 32 attention heads and 8 key-value heads; use "
        "cluster.sequence_parallel_size=1"
    )
    # a reference group (here: not scored by the policy) shares its sequences too
    reference = [*overrides[:2], "cluster.policy_ranks=2", "cluster.sequence_parallel_size=2"]
    cfg = compose([*reference, "reference.from_policy=false", "cluster.reference_ranks=1"], "train")
    why = unrunnable(make_plan(cfg, "train", nodes, PlanModels(models["8b"], models["8b"]), "--nodes"))
    assert (
        why
        == "cluster.sequence_parallel_size=2 does not divide cluster.reference_ranks=1; use cluster.reference_ranks=2"
    )
    cfg = compose([*reference, "cluster.reference_ranks=1"], "train")  # the policy scores the reference itself
    assert unrunnable(make_plan(cfg, "train", nodes, PlanModels(models["8b"], models["8b"]), "--nodes")) is None


def test_a_judge_model_is_planned_as_an_engine_of_its_own_model(models, capsys):
    run = ["online", f"model.path={models['8b']}", "cluster=single_node_8gpu", "--nodes=1"]
    status, out = plan(capsys, *run, f"reward.judge_model={models['8b']}")
    assert status == 0, out
    # the run's engines hold 512 + 64 tokens; a judge prompt 4 x 576 + 512 (a prompt and two responses, a template)
    assert "rollout     2 x {CPU: 4, GPU: 1}  tensor parallel 1, max_model_len 576;" in out
    assert (
        "judge       1 x {CPU: 4, GPU: 1}  judge engine, tensor parallel 1, max_model_len 2816; node0: ranks 0 (GPUs 2)"
        in out
    )
    assert "judge GPU: weights 14.96 + KV cache" in out  # 8.03B parameters in bf16, as the rollout engines' own
    status, out = plan(capsys, *run, f"reward.judge_model={models['70b']}")
    assert status == 1
    verdict = out[out.index("verdict:") :]
    assert "judge: 136.0 GiB per GPU of 80.0 GiB (largest part: weights, 131.4 GiB)" in verdict
    assert "short of one sequence of max_model_len=2816" in verdict  # the judge's length, not the rollout's
    assert "reward.judge_tensor_parallel_size=4" in verdict  # the fix: 35 GiB of weights per GPU
    status, out = plan(
        capsys, *run[:-1], "--nodes=2", f"reward.judge_model={models['70b']}", "reward.judge_tensor_parallel_size=4"
    )
    assert status == 0, out
    assert "judge       1 x {CPU: 4, GPU: 4}  judge engine, tensor parallel 4, max_model_len 2816;" in out
    assert "judge GPU: weights 32.85 + KV cache" in out  # 70.55B parameters in bf16 over 4 GPUs
    status, out = plan(capsys, *run, "reward.judge_fn=os.path:join")
    assert status == 0 and "judge       1 x {CPU: 4}  judge function;" in out


def test_a_held_out_judge_model_is_planned_as_a_judge_engine_of_its_own(models, capsys):
    """eval.judge_model beside a reward: a group of its own, sized as a training judge (the same 8B judge's 14.96 GiB
    of bf16 weights and max_model_len as above); eval.judge_fn: a CPU worker."""
    run = ["online", f"model.path={models['8b']}", "cluster=single_node_8gpu", "--nodes=1"]
    status, out = plan(capsys, *run, f"eval.judge_model={models['8b']}")
    assert status == 0, out
    assert "eval_judge   1 x {CPU: 4, GPU: 1}  judge engine, tensor parallel 1, max_model_len 2816;" in out
    assert "eval_judge GPU: weights 14.96 + KV cache" in out
    status, out = plan(capsys, *run, "eval.judge_fn=os.path:join")
    assert status == 0 and "eval_judge   1 x {CPU: 4}  judge function;" in out


def canonical(groups: list[tuple[str, list[str]]], concurrent: bool) -> list:
    """A placement up to the naming of interchangeable nodes: for each group, which ranks share a node; and for the
    groups alive together, the multiset of what each node holds (one group at a time offline: after the reference
    group is released every node is alike again)."""
    phases = [groups] if concurrent else [[g] for g in groups]
    shapes = []
    for phase in phases:
        held: dict[str, Counter] = {}
        for name, nodes in phase:
            for node in nodes:
                held.setdefault(node, Counter())[name] += 1
        ranks = {
            name: sorted(tuple(i for i, n in enumerate(nodes) if n == node) for node in set(nodes))
            for name, nodes in phase
        }
        shapes.append((ranks, sorted(tuple(sorted(c.items())) for c in held.values())))
    return shapes


@pytest.fixture(scope="module")
def fake_gpu_cluster():
    """Four Ray nodes of 8 fake GPUs and 128 CPUs each: placement groups are made for real, no model is loaded."""
    import ray
    from ray.cluster_utils import Cluster

    with short_ray_tmpdir():
        node = {"num_cpus": 128, "num_gpus": 8, "object_store_memory": 128 << 20}
        cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        for _ in range(3):
            cluster.add_node(**node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
        ray.shutdown()
        cluster.shutdown()


def wait_until_released(timeout_s: float = 30.0) -> None:
    """Until every CPU and GPU of the cluster is available again (removed placement groups free them a moment later)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        total, free = ray.cluster_resources(), ray.available_resources()
        if all(free.get(k, 0.0) >= total.get(k, 0.0) for k in ("CPU", "GPU")):
            return
        time.sleep(0.1)
    raise TimeoutError(f"resources not released: {ray.available_resources()} of {ray.cluster_resources()}")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "online"])
@pytest.mark.parametrize("preset, model, nodes", PRESETS)
def test_ray_places_every_group_where_the_plan_said(fake_gpu_cluster, models, preset, model, nodes, command):
    from ray.util.placement_group import remove_placement_group

    from dpo_ray.groups.actor_group import bundle_nodes, reserve
    from dpo_ray.sizing.resources import group_needs, reference_group_needed

    overrides = [f"model.path={models[model]}", f"cluster={preset}", "reference.from_policy=false"]
    cfg = compose(overrides + [reward_option(preset, models)], command)
    live = ray_nodes()
    assert len(live) == 4 and all(n.gpus == 8 for n in live)
    run_models = PlanModels(models[model], models[model], models["rm-8b"] if preset != "multi_node_70b" else "")
    planned = make_plan(cfg, command, live, run_models, "test")
    assert all(g.nodes for g in planned.groups), planned.problems
    online = command == "online"
    predicted = [(g.need.name, [live[i].node_id for i in g.nodes]) for g in planned.groups]

    def place_as_the_campaign_does() -> list:
        placed, alive = [], []
        wait_until_released()  # the previous case's groups: Ray returns their resources asynchronously
        for need in group_needs(cfg, reference_group_needed(cfg, online), online):  # as the campaign starts them
            group = reserve(need, str(cfg.cluster.placement), ready_timeout_s=60)
            placed.append((need.name, bundle_nodes(group)))
            alive.append(group)
            if not online:  # an offline run releases its reference group before the policy group starts
                remove_placement_group(alive.pop())
                wait_until_released()
        for group in alive:
            remove_placement_group(group)
        return placed

    # One retry, on a settled cluster: a raylet can still hold a just-removed group's bundle after the GCS counts it
    # free, and then Ray places the next group elsewhere (seen once in CI); a wrong plan fails both tries.
    placed = place_as_the_campaign_does()
    if canonical(placed, online) != canonical(predicted, online):
        time.sleep(2.0)
        placed = place_as_the_campaign_does()
    assert canonical(placed, online) == canonical(predicted, online)
    # and the plan made for the same nodes described by flags places the groups alike
    described = described_nodes(4, 8, 80, 128, 256)
    flagged = make_plan(cfg, command, described, run_models, "flags")
    flagged_at = [(g.need.name, [str(i) for i in g.nodes]) for g in flagged.groups]
    assert canonical(flagged_at, online) == canonical(predicted, online)


@pytest.mark.slow
def test_without_nodes_it_plans_the_embedded_default_for_this_machine(capsys, task_cache_dir):
    status, out = plan(capsys, "train", f"cache_dir={task_cache_dir}")
    assert status == 0, out
    assert "(this machine, a local Ray)" in out and "ZeRO stage 0 (auto)" in out and "verdict: fits" in out


def test_an_engine_whose_share_leaves_no_room_for_a_weight_sync_is_refused_with_the_share_that_does(models, capsys):
    """Llama-3-70B over 8 GPUs of 80 GiB: a sync holds a 1 GiB bucket, the 1.96 GiB embedding whole and its reloaded
    shard (0.24 GiB) beside vLLM's share; 0.97 of the GPU leaves 2.4 GiB, 0.95 leaves 4.0."""
    run = ["online", f"model.path={models['70b']}", "cluster=multi_node_70b", "reward.fn=os.path:join", "--nodes=4"]
    status, out = plan(capsys, *run)
    assert status == 0 and "weight sync 3.20 = " in out, out
    # saving final/ at ZeRO-3 gathers the 131.4 GiB model into rank 0's host memory, on its node only
    assert "rank 0 gathers 131.4 GiB into host memory to save the model" in out
    assert "node3: policy 967.9 = 967.9 of 1024.0" in out and "node1: reward 1.0, policy 836.5 = 837.5" in out
    status, out = plan(capsys, *run, "rollout.gpu_memory_utilization=0.97")
    assert status == 1
    verdict = out[out.index("verdict:") :]
    assert "rollout: a weight sync holds 3.2 GiB per GPU beside vLLM's share, and " in verdict
    assert "rollout.gpu_memory_utilization=0.97 leaves 2.4 GiB of 80.0 GiB" in verdict
    assert "would fit with: rollout.gpu_memory_utilization=0.95 (79.2 GiB per GPU)" in verdict


def test_policy_rank_0_sending_the_weights_is_planned_and_a_bucket_it_cannot_hold_is_refused(models, capsys):
    """Llama-3-70B, 16 ZeRO-3 ranks: rank 0 sends from a 1 GiB bucket and gathers a bucket's worth of whole tensors
    (here the embedding, 128256 x 8192 x 2 B = 1.96 GiB), merging LoRA one projection at a time in float32
    (8192 x 28672 x (4 + 4 + 2) B = 2.19 GiB), while the step's activations and gathers are freed."""
    run = ["online", f"model.path={models['70b']}", "cluster=multi_node_70b", "reward.fn=os.path:join", "--nodes=4"]
    status, out = plan(capsys, *run)
    assert status == 0, out
    line = next(x for x in out.splitlines() if "policy GPU:" in x)
    step = dict(p.rsplit(" ", 1) for p in line.split(": ", 1)[1].split(" = ")[0].split(" + "))
    kept = sum(float(step[k]) for k in ("weights", "reduce bucket", "reduce-scatter output"))
    sending = 1.00 + 128256 * 8192 * 2 / 2**30
    assert f"send bucket 1.00 + gathered chunk {sending - 1:.2f} in place of" in out
    assert f"= {(kept + sending) * 1.1 + 1.5:.2f}\n" in out  # the stated fragmentation and CUDA context margins
    lora = ["model.lora.enabled=true", "deepspeed.offload_optimizer=none", "rollout.lora_sync=merged"]
    assert f"LoRA merge {8192 * 28672 * 10 / 2**30:.2f} in place of" in plan(capsys, *run, *lora)[1]
    assert "LoRA merge" not in plan(capsys, *run, *lora[:2])[1]  # on GPUs the adapter alone is sent by default
    # a step fits 24 GiB; rank 0 with an 8 GiB bucket does not
    status, out = plan(capsys, *run, "rollout.sync_bucket_mb=8192", "--gpu-memory-gib=24")
    verdict = out[out.index("verdict:") :]
    assert status == 1 and "policy: rank 0 holds 30.3 GiB of 24.0 GiB while it sends the weights" in verdict
    assert "rollout.sync_bucket_mb=256 (16.8 GiB per GPU)" in verdict.split("policy: rank 0")[1]


def test_gpus_the_run_leaves_idle_are_named_with_the_option_that_uses_them(models, capsys):
    """--nodes 1 --gpus-per-node 8 and no cluster.gpus_per_rank planned a one-rank CPU run and said only 'fits';
    single_node_8gpu trains offline on its 4 policy GPUs of 8 (issue 40)."""
    status, out = plan(capsys, "train", f"model.path={models['8b']}", "--nodes=1", "--gpus-per-node=8")
    assert "GPUs: the nodes have 8 and the run asks for none (cluster.gpus_per_rank=0: it would run on CPUs)" in out
    assert "cluster.gpus_per_rank=1 cluster.policy_ranks=8 uses them" in out
    status, out = plan(capsys, "train", f"model.path={models['8b']}", "cluster=single_node_8gpu", "--nodes=1")
    assert status == 0, out
    assert "GPUs: the run uses 4 of the nodes' 8 at its peak (offline only the policy's 4 rank(s) train; " in out
    assert "cluster.policy_ranks=8 trains on all)" in out
    status, out = plan(capsys, "online", f"model.path={models['8b']}", "cluster=single_node_8gpu",
                       f"reward.model_path={models['rm-8b']}", "--nodes=1")  # fmt: skip
    assert status == 0 and "GPUs:" not in out, out  # online the preset's groups take all 8
