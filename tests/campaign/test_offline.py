"""Offline campaigns on a real local Ray: the reference cache, LoRA, and the embedded task end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from dpo_ray.campaign.inputs import OfflineInputs
from dpo_ray.campaign.offline import OfflineCampaign
from dpo_ray.campaign.reference_cache import ReferenceCache
from dpo_ray.data.collate import collate_pairs
from dpo_ray.data.tokenize import TokenizedPair
from dpo_ray.logprobs import forward_pairs

from ..conftest import make_pairs

pytestmark = pytest.mark.slow


def test_reference_cache_is_written_once_reused_and_invalidated_by_new_data(local_ray, run_config, tiny_model_dir):
    pairs = make_pairs(6, seed=7)
    campaign = OfflineCampaign(run_config, OfflineInputs(tiny_model_dir, tiny_model_dir, pairs, pairs[:2]))
    groups = [[0, 1, 2], [3, 4, 5]]
    (chosen, rejected), computed = campaign.reference.logps(pairs, groups)
    assert computed
    files = list(ReferenceCache(run_config.cache_dir).root.glob("*.safetensors"))
    assert len(files) == 1
    with torch.no_grad():
        out = forward_pairs(AutoModelForCausalLM.from_pretrained(tiny_model_dir), collate_pairs(pairs, 0))
    assert torch.allclose(torch.tensor(chosen), out.chosen_logps, atol=1e-5)

    again, computed_again = campaign.reference.logps(pairs, groups)
    assert not computed_again and again == (chosen, rejected)

    changed = pairs[:5] + make_pairs(1, seed=99)
    _, computed_changed = campaign.reference.logps(changed, groups)
    assert computed_changed and len(list(ReferenceCache(run_config.cache_dir).root.glob("*.safetensors"))) == 2
    _, computed_regrouped = campaign.reference.logps(pairs, [[0, 1], [2, 3, 4, 5]])  # bf16 values depend on them
    assert computed_regrouped and len(list(ReferenceCache(run_config.cache_dir).root.glob("*.safetensors"))) == 3
    campaign.reference.shutdown()


def test_the_reference_pass_in_waves_gives_the_numbers_of_one_pass(local_ray, run_config, tiny_model_dir, monkeypatch):
    """Scored a micro-batch per rank per call (the progress bar's waves), each pair keeps its micro-batch: the same
    numbers as one call with all of them, through a reference group and through the policy."""
    from dpo_ray.campaign import reference

    run_config.reference.cache, run_config.cluster.reference_ranks = False, 2
    pairs = make_pairs(14, seed=9)
    groups = [[i, i + 1] for i in range(0, 14, 2)][::-1]  # 7 micro-batches, not in index order
    campaign = OfflineCampaign(run_config, OfflineInputs(tiny_model_dir, tiny_model_dir, pairs, pairs[:2]))
    whole, _ = campaign.reference.logps(pairs, groups)
    from dpo_ray.groups.policy_group import PolicyGroup

    policy = PolicyGroup(run_config, tiny_model_dir, 1, 1, campaign.env)
    try:
        by_policy, _ = campaign.reference.logps(pairs, groups, policy)
        monkeypatch.setattr(reference, "WAVE", 1)
        waves, _ = campaign.reference.logps(pairs, groups)
        policy_waves, _ = campaign.reference.logps(pairs, groups, policy)
    finally:
        policy.shutdown()
        campaign.reference.shutdown()
    assert waves == whole and policy_waves == by_policy
    with torch.no_grad():
        out = forward_pairs(AutoModelForCausalLM.from_pretrained(tiny_model_dir), collate_pairs(pairs, 0))
    assert torch.allclose(torch.tensor(whole[0]), out.chosen_logps, atol=1e-5)


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"use_dora": True, "use_rslora": True, "zero_stage": "3"},
        {"use_dora": True, "modules_to_save": ["lm_head"], "zero_stage": "2"},
    ],
    ids=["lora", "dora-rslora-zero3", "dora-lm_head-zero2"],
)
def test_lora_run_scores_the_reference_with_the_adapter_off_and_saves_adapter_and_merged_model(
    local_ray, run_config, tiny_model_dir, variant
):
    cfg = run_config
    cfg.model.lora.enabled, cfg.model.lora.save_merged = True, True
    for name, value in variant.items():
        setattr(cfg.deepspeed if name == "zero_stage" else cfg.model.lora, name, value)
    cfg.data.layout = "prefix_shared"  # the adapter-off reference forward takes the shared layout too
    cfg.cluster.policy_ranks = 2
    cfg.train.optimizer, cfg.train.lr, cfg.train.epochs = "adamw", 1e-2, 2
    pairs = make_pairs(12, seed=8)
    campaign = OfflineCampaign(cfg, OfflineInputs(tiny_model_dir, tiny_model_dir, pairs[:10], pairs[10:]))
    result = campaign.run()
    assert result.reference_computed
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        base_out = forward_pairs(base, collate_pairs(pairs, 0))
    cached = ReferenceCache(cfg.cache_dir).load(campaign.reference.key(pairs, campaign.reference_groups()))
    assert torch.allclose(torch.tensor(cached[0]), base_out.chosen_logps, atol=1e-5)
    assert (result.final_model / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(result.final_model / "merged")
    with torch.no_grad():
        merged_out = forward_pairs(merged, collate_pairs(pairs[10:], 0))
    # after training, the merged policy has moved away from its base, by the amount the eval metrics report
    assert not torch.allclose(merged_out.chosen_logps, base_out.chosen_logps[10:], atol=1e-4)
    assert result.after["eval_logps/chosen"] == pytest.approx(merged_out.chosen_logps.mean().item(), abs=1e-4)


def test_embedded_task_end_to_end_improves_held_out_and_sampled_accuracy(local_ray, tmp_path_factory, task_cache_dir):
    from dpo_ray.compose import compose
    from dpo_ray.workers.models import load_tokenizer

    run_dir = tmp_path_factory.mktemp("e2e")
    cfg = compose(
        [
            f"output_dir={run_dir}",
            f"cache_dir={task_cache_dir}",
            "progress=false",
            "train.epochs=2",
            "train.checkpoint_every=10",
        ]
    )
    campaign = OfflineCampaign(cfg)
    result = campaign.run()
    assert result.after["eval_rewards/accuracies"] > result.before["eval_rewards/accuracies"] + 0.5
    assert result.after["eval_rewards/margins"] > 0.1
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [m for m in metrics if "loss" in m]
    assert len(train_steps) == len(result.step_seconds)
    assert {
        "rewards/chosen",
        "rewards/margins",
        "logps/rejected",
        "logits/chosen",
        "grad_norm",
        "learning_rate",
        "tokens_per_second",
        "entropy",
        "num_tokens",
        "mean_token_accuracy",
    } <= set(train_steps[0])
    # TRL's num_tokens: every trained pair's prompt and completion tokens, counted on over the steps (2 epochs)
    assert train_steps[-1]["num_tokens"] == 2 * sum(p.tokens for p in campaign.inputs.train)
    assert all(0 < s["entropy"] and 0 <= s["mean_token_accuracy"] <= 1 for s in train_steps)
    assert {"eval_entropy", "eval_mean_token_accuracy"} <= set(result.after)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_10" and (
        run_dir / "checkpoints" / "step_10"
    ).is_dir()
    from ..report.checks import check_report

    plan = (run_dir / "plan.txt").read_text()  # the plan of this run, made before any actor started
    assert "policy      2 x {CPU: 1}  ZeRO stage 0 (auto)" in plan and plan.endswith("verdict: fits\n")
    stats = json.loads((run_dir / "data_stats.json").read_text())
    assert 0 <= stats["eval"]["pairs/reference_disagrees"] <= 1 and stats["train"]["length/chosen"] > 0
    check_report(run_dir, ["training.png"])

    tokenizer = load_tokenizer(campaign.inputs.model_path)
    task_metrics = campaign.inputs.task_metrics
    before = task_metrics(AutoModelForCausalLM.from_pretrained(campaign.inputs.model_path), tokenizer)
    after = task_metrics(AutoModelForCausalLM.from_pretrained(result.final_model), tokenizer)
    assert after["task/sampled_accuracy"] > before["task/sampled_accuracy"] + 0.15

    # vLLM loads the saved directory unchanged and answers as transformers does (float32; near-ties may flip a token)
    from dpo_ray.tasks.embedded import ensure_embedded_task
    from dpo_ray.tasks.sampling import sample_responses

    prompts = ensure_embedded_task(cfg.embedded, cfg.cache_dir).eval_prompts[:50]
    hf = [
        outs[0]
        for outs in sample_responses(
            AutoModelForCausalLM.from_pretrained(result.final_model), tokenizer, prompts, 1, 0.0
        )
    ]
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parents[1] / "vllm_greedy.py"),
            str(result.final_model),
            json.dumps(prompts),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    vllm_answers = json.loads(done.stdout.split("RESULT", 1)[1])
    assert sum(a == b for a, b in zip(hf, vllm_answers)) >= 0.95 * len(prompts)

    # The same command again says the run is done and prints its table (summary.md, as the CLI writes it), without
    # starting Ray; another beta stops naming the difference, and the finished run is untouched.
    from dpo_ray.campaign.summary import offline_summary

    table = offline_summary(result, campaign.inputs)
    overrides = [f"output_dir={run_dir}", f"cache_dir={task_cache_dir}", "progress=false", "train.epochs=2"]
    again = subprocess.run(
        [sys.executable, "-m", "dpo_ray.cli", "train", *overrides, "train.checkpoint_every=10"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and "holds this run, finished at" in again.stdout, again.stderr[-3000:]
    assert table in again.stdout and "Ray:" not in again.stderr
    final = (result.final_model / "model.safetensors").stat().st_mtime_ns
    other = subprocess.run(
        [sys.executable, "-m", "dpo_ray.cli", "train", *overrides, "algo.beta=0.3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert other.returncode == 2 and "which this run differs from: algo.beta: 0.1 -> 0.3" in other.stderr, other.stderr
    assert (result.final_model / "model.safetensors").stat().st_mtime_ns == final


def test_kto_on_the_embedded_tasks_labelled_answers_raises_held_out_and_sampled_accuracy(
    local_ray, tmp_path_factory, task_cache_dir
):
    """algo=kto on the embedded task trains on its KTO variant (every distinct sampled answer, labelled by the rule):
    desirable answers gain on undesirable ones held out, and the sampled and greedy accuracies rise."""
    from dpo_ray.compose import compose
    from dpo_ray.workers.models import load_tokenizer

    run_dir = tmp_path_factory.mktemp("kto")
    cfg = compose(["algo=kto", f"output_dir={run_dir}", f"cache_dir={task_cache_dir}", "progress=false"])
    campaign = OfflineCampaign(cfg)
    assert all(e.label is not None for e in campaign.inputs.train) and "train_kto.jsonl" in campaign.inputs.data_note
    result = campaign.run()
    assert result.after["eval_rewards/margins"] > 1.0 and result.after["eval_loss"] < result.before["eval_loss"]
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert {"kl", "count/chosen", "count/rejected", "rewards/chosen", "logps/rejected", "entropy"} <= set(steps[0])
    tokenizer, task_metrics = load_tokenizer(campaign.inputs.model_path), campaign.inputs.task_metrics
    before = task_metrics(AutoModelForCausalLM.from_pretrained(campaign.inputs.model_path), tokenizer)
    after = task_metrics(AutoModelForCausalLM.from_pretrained(result.final_model), tokenizer)
    assert after["task/sampled_accuracy"] > before["task/sampled_accuracy"] + 0.08
    assert after["task/greedy_accuracy"] > before["task/greedy_accuracy"] + 0.1


def _reference_groups_so_far():
    from ray.util import placement_group_table

    return sum(1 for t in placement_group_table().values() if t["name"] == "dpo-ray-reference")


def test_a_run_its_plan_says_does_not_fit_stops_before_any_group_is_placed(local_ray, run_config, tiny_model_dir):
    from ray.util import placement_group_table

    from dpo_ray.campaign.runtime import PlanCheck, check_plan
    from dpo_ray.planning import PlanError
    from dpo_ray.planning.plan import PlanModels

    cfg = run_config
    cfg.train.batch_size = cfg.train.micro_batch_size = 100_000  # 10^8 tokens of activations: terabytes
    pairs = make_pairs(20, seed=3)
    groups = len(placement_group_table())
    with pytest.raises(
        PlanError, match=r"verdict: does not fit\n  .* host memory: .*\(policy .*\n    would fit with: "
    ):
        OfflineCampaign(cfg, OfflineInputs(tiny_model_dir, tiny_model_dir, pairs[:16], pairs[16:])).run()
    assert len(placement_group_table()) == groups
    plan = (Path(cfg.output_dir) / "plan.txt").read_text()
    assert "train.micro_batch_size=" in plan  # the option that would make it fit, with its size
    cfg.cluster.memory_check = False  # warned, not stopped
    check_plan(cfg, PlanCheck("train", PlanModels(tiny_model_dir, tiny_model_dir)), Path(cfg.output_dir))


@pytest.mark.parametrize("loss_type", ["simpo", "orpo"])
def test_reference_free_losses_start_no_reference_and_lower_the_loss(local_ray, run_config, tiny_model_dir, loss_type):
    cfg = run_config
    cfg.algo.loss_type, cfg.algo.rpo_alpha = loss_type, 0.0
    cfg.data.layout = "prefix_shared"
    cfg.train.optimizer, cfg.train.lr, cfg.train.epochs = "adamw", 3e-3, 4
    pairs = make_pairs(16, seed=12)
    before = _reference_groups_so_far()
    # evaluated on its own training pairs: the loss it optimises must fall
    result = OfflineCampaign(cfg, OfflineInputs(tiny_model_dir, tiny_model_dir, pairs, pairs)).run()
    assert _reference_groups_so_far() == before and not result.reference_computed
    assert "eval_kl/chosen" not in result.after
    assert result.after["eval_loss"] < result.before["eval_loss"] - 0.05


def test_every_reference_loss_trains_through_the_ray_path(local_ray, run_config, tiny_model_dir):
    from dpo_ray.losses.registry import Kind, names_of

    cfg = run_config
    names = names_of(Kind.PAIRED)
    cfg.algo.loss_type = ",".join(names + ["sft"])  # one MPO-style sum of all of them, each weighted
    cfg.algo.loss_weights = [0.1] * (len(names) + 1)
    cfg.algo.label_smoothing = 0.01  # used by exo_pair, robust, aot, aot_unpaired
    cfg.cluster.policy_ranks = 2
    cfg.data.layout = "prefix_shared"  # every loss sees the same log-probs in the shared layout
    cfg.train.optimizer, cfg.train.lr, cfg.train.epochs = "adamw", 3e-3, 3
    pairs = make_pairs(16, seed=13)
    result = OfflineCampaign(cfg, OfflineInputs(tiny_model_dir, tiny_model_dir, pairs, pairs)).run()
    assert result.after["eval_loss"] < result.before["eval_loss"]
    assert result.after["eval_rewards/margins"] > 0


@pytest.mark.parametrize(
    "layout, from_policy",
    [("padded", False), ("packed", False), ("prefix_shared", False), ("prefix_shared", True)],
    ids=["padded-group", "packed-group", "prefix_shared-group", "prefix_shared-policy"],
)
def test_in_bf16_policy_and_reference_agree_exactly_at_step_0(
    local_ray, run_config, tiny_model_dir, layout, from_policy
):
    """A reference group of bf16 replicas (or the policy itself) scores each pair in the micro-batch the ZeRO-3 policy
    first sees it in: every implicit reward of the held-out evaluation and of the first step is exactly 0."""
    cfg = run_config
    cfg.model.dtype, cfg.data.layout, cfg.reference.from_policy = "bfloat16", layout, from_policy
    cfg.cluster.policy_ranks, cfg.cluster.reference_ranks, cfg.train.max_steps = 2, 2, 1
    pairs = make_pairs(20, seed=14)
    result = OfflineCampaign(cfg, OfflineInputs(tiny_model_dir, tiny_model_dir, pairs[:14], pairs[14:])).run()
    first_step = next(json.loads(line) for line in (result.run_dir / "metrics.jsonl").open() if '"loss"' in line)
    for metrics, prefix in ((result.before, "eval_"), (first_step, "")):
        assert metrics[f"{prefix}rewards/chosen"] == metrics[f"{prefix}rewards/rejected"] == 0.0, metrics
        assert metrics[f"{prefix}rewards/accuracies"] == 0.0 and metrics[f"{prefix}kl/chosen"] == 0.0


def _mixed(start: dict, policy: dict, alpha: float) -> dict:
    """TRL's TR-DPO mix, written out: ref <- (1 - alpha) * ref + alpha * policy, in place, in the weights' dtype."""
    return {n: start[n].clone().mul_(1 - alpha).add_(policy[n], alpha=alpha) for n in policy}


@pytest.mark.parametrize("sharding, ranks", [("replicas", 1), ("zero3", 2)])
def test_tr_dpo_mixes_the_policy_into_the_reference_and_scores_with_the_mix(
    local_ray, run_config, tiny_model_dir, sharding, ranks
):
    """After step k the reference's weights are alpha * policy + (1 - alpha) * reference, exactly (a replica's, or the
    ZeRO-3 partitions put together), and the held-out metrics after it use the mixed weights' log-probs."""
    from safetensors.torch import load_file

    cfg, alpha = run_config, 0.3
    cfg.algo.sync_ref_model, cfg.algo.ref_model_mixup_alpha, cfg.algo.ref_model_sync_steps = True, alpha, 2
    cfg.train.max_steps, cfg.train.checkpoint_every = 2, 2
    cfg.reference.sharding, cfg.cluster.reference_ranks = sharding, ranks
    pairs = make_pairs(24, seed=3)
    result = OfflineCampaign(cfg, OfflineInputs(tiny_model_dir, tiny_model_dir, pairs[:16], pairs[16:])).run()

    policy = load_file(result.final_model / "model.safetensors")
    expected = _mixed(load_file(Path(tiny_model_dir) / "model.safetensors"), policy, alpha)
    parts = [load_file(f) for f in sorted((result.run_dir / "checkpoints" / "step_2").glob("reference-rank*"))]
    assert len(parts) == (1 if sharding == "replicas" else ranks)
    for name, want in expected.items():
        got = torch.cat([p[name].reshape(-1) for p in parts])[: want.numel()].view_as(want)
        assert torch.equal(got, want), name

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.load_state_dict(expected, strict=False)
    with torch.no_grad():
        out = forward_pairs(model.eval(), collate_pairs(pairs[16:], 0))
    reference_chosen = result.after["eval_logps/chosen"] - result.after["eval_rewards/chosen"] / cfg.algo.beta
    assert reference_chosen == pytest.approx(out.chosen_logps.mean().item(), abs=1e-4)
    before = result.before["eval_logps/chosen"] - result.before["eval_rewards/chosen"] / cfg.algo.beta
    assert abs(before - reference_chosen) > 1e-3  # the reference did move


@pytest.fixture(scope="module")
def uninterrupted_tr_dpo():
    """The uninterrupted runs, by how their reference was sharded: the resume tests written the same way share one."""
    return {}


@pytest.mark.parametrize(
    "written_by, resumed_on",
    [(("replicas", 1), ("replicas", 1)), (("zero3", 2), ("zero3", 1)), (("replicas", 1), ("zero3", 2))],
)
def test_a_resumed_tr_dpo_run_continues_from_the_mixed_reference(
    local_ray, run_config, tiny_model_dir, tmp_path_factory, tmp_path, uninterrupted_tr_dpo, written_by, resumed_on
):
    """Stopped after a mix and resumed, TR-DPO ends with the weights of an uninterrupted run (the checkpoint holds the
    mixed reference: the original one would train the later steps against another reference), also on another
    number of reference ranks or the other sharding (a node lost: the ZeRO-3 parts written are joined and cut anew)."""
    import shutil

    from safetensors.torch import load_file

    cfg = run_config
    cfg.algo.sync_ref_model, cfg.algo.ref_model_sync_steps = True, 1
    cfg.train.checkpoint_every, cfg.reference.cache = 2, False
    cfg.reference.sharding, cfg.cluster.reference_ranks = written_by
    pairs = make_pairs(32, seed=5)
    inputs = OfflineInputs(tiny_model_dir, tiny_model_dir, pairs[:24], pairs[24:])
    if written_by not in uninterrupted_tr_dpo:
        cfg.output_dir = str(tmp_path_factory.mktemp("tr-dpo-whole"))
        uninterrupted_tr_dpo[written_by] = OfflineCampaign(cfg, inputs).run()
    whole = uninterrupted_tr_dpo[written_by]
    assert whole.step_seconds and len(whole.step_seconds) == 3
    # a copy of the run as it stood at its step-2 checkpoint: a crash during step 3
    stopped = tmp_path / "stopped"
    shutil.copytree(whole.run_dir, stopped, ignore=shutil.ignore_patterns("step_3", "final"))
    (stopped / "checkpoints" / "latest").write_text("step_2")
    record = json.loads((stopped / "run.json").read_text())
    (stopped / "run.json").write_text(json.dumps({**record, "state": "running"}))  # it never finished
    cfg.output_dir = str(stopped)
    cfg.reference.sharding, cfg.cluster.reference_ranks = resumed_on
    resumed = OfflineCampaign(cfg, inputs).run()
    assert resumed.resumed_from == "step_2"
    a, b = (load_file(r.final_model / "model.safetensors") for r in (whole, resumed))
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_report_to_sends_metrics_config_and_plots_to_tensorboard_wandb_and_mlflow(
    local_ray, run_config, tiny_model_dir, monkeypatch
):
    """A short run reporting to all three trackers, then resumed for one more step: each tracker's own files hold the
    metrics of every step as metrics.jsonl has them, the config, the run name and the report's plots; the resumed run
    reports into the same W&B and MLflow runs."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dpo_ray.report import write_report
    from dpo_ray.report.trackers import IDS

    from ..report.test_trackers import wandb_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = run_config
    cfg.report_to, cfg.run_name = ["tensorboard", "wandb", "mlflow"], "tiny-dpo"
    cfg.train.max_steps, cfg.train.checkpoint_every, cfg.train.eval_every = 2, 2, 1
    inputs = OfflineInputs(tiny_model_dir, tiny_model_dir, make_pairs(32, seed=8)[:24], make_pairs(8, seed=9))
    result = OfflineCampaign(cfg, inputs).run()
    write_report(result.run_dir, cfg.report_to, cfg.run_name)
    ids = json.loads((result.run_dir / IDS).read_text())
    cfg.train.max_steps = 3
    OfflineCampaign(cfg, inputs).run()
    assert json.loads((result.run_dir / IDS).read_text()) == ids

    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {row["step"]: row["loss"] for row in rows if "loss" in row}
    assert sorted(losses) == [1, 2, 3]

    history, config, names = wandb_records(result.run_dir)
    assert {row["_step"]: row["loss"] for row in history if "loss" in row} == losses
    assert any(row.get("report/training/_type") == "image-file" for row in history)
    assert config["algo"]["beta"] == cfg.algo.beta and names == {"tiny-dpo"}
    # offline-run-<time>-<run id>[-N]: one W&B run, whose directories a resume within the same second numbers
    assert len({p.name.split("-")[3] for p in result.run_dir.glob("wandb/offline-run-*")}) == 1

    client = MlflowClient(tracking_uri=(result.run_dir / "mlruns").resolve().as_uri())
    run = client.get_run(ids["mlflow"])
    assert run.info.run_name == "tiny-dpo" and run.data.params["algo.beta"] == str(cfg.algo.beta)
    assert {m.step: m.value for m in client.get_metric_history(ids["mlflow"], "loss")} == losses
    assert "report/training.png" in [a.path for a in client.list_artifacts(ids["mlflow"], "report")]

    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("loss")} == pytest.approx(losses)
    assert "report/training" in events.Tags()["images"]


def kto_examples(n: int, seed: int) -> list:
    """Labelled completions beside the previous example's completion (the loader's rotation), half desirable."""
    pairs = make_pairs(n, seed=seed)
    return [
        TokenizedPair(p.prompt_ids, p.chosen_ids, pairs[i - 1].chosen_ids, label=i % 2 == 0)
        for i, p in enumerate(pairs)
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        {"layout": "prefix_shared", "ranks": 2, "zero_stage": "3", "lora": False},
        {"layout": "padded", "ranks": 1, "zero_stage": "auto", "lora": True},
    ],
)
def test_kto_trains_through_the_ray_path(local_ray, run_config, tiny_model_dir, overrides):
    """KTO through the reference group and its cache (ZeRO-3 ranks, prefix sharing) and through LoRA's adapter-off
    reference: the held-out loss falls and desirable completions gain on undesirable ones."""
    cfg = run_config
    cfg.algo.loss_type, cfg.algo.rpo_alpha = "kto", 0.0
    cfg.data.layout, cfg.cluster.policy_ranks = overrides["layout"], overrides["ranks"]
    cfg.deepspeed.zero_stage, cfg.model.lora.enabled = overrides["zero_stage"], overrides["lora"]
    cfg.train.optimizer, cfg.train.lr, cfg.train.epochs = "adamw", 3e-3 if not overrides["lora"] else 3e-2, 3
    examples = kto_examples(24, seed=21)
    result = OfflineCampaign(cfg, OfflineInputs(tiny_model_dir, tiny_model_dir, examples, examples)).run()
    assert result.after["eval_loss"] < result.before["eval_loss"]
    assert result.after["eval_rewards/margins"] > result.before["eval_rewards/margins"] + 0.05
    assert result.after["eval_count/chosen"] == 12 and "eval_kl" in result.after


def _corrupt(path: Path, how: str) -> None:
    """Damage a cache file as the issue saw it happen: cut, a header byte flipped, a value altered in place, a NaN
    written over a value (the last two leave a file that still parses)."""
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "header byte":
        data[12] ^= 0xFF
    elif how == "value altered":
        data[header + 4] ^= 0x01
    elif how == "nan planted":
        data[header : header + 4] = bytes.fromhex("0000c07f")  # float32 NaN
    path.write_bytes(bytes(data))


def test_a_damaged_reference_cache_is_named_removed_and_recomputed(local_ray, run_config, tiny_model_dir, caplog):
    pairs = make_pairs(6, seed=17)
    campaign = OfflineCampaign(run_config, OfflineInputs(tiny_model_dir, tiny_model_dir, pairs, pairs[:2]))
    groups = [[0, 1, 2], [3, 4, 5]]
    clean, computed = campaign.reference.logps(pairs, groups)
    (path,) = ReferenceCache(run_config.cache_dir).root.glob("*.safetensors")
    assert computed and campaign.reference.logps(pairs, groups) == (clean, False)
    caplog.set_level("WARNING", logger="dpo_ray.campaign.reference_cache")
    for how in ("truncated", "header byte", "value altered", "nan planted"):
        caplog.clear()
        _corrupt(path, how)
        again, recomputed = campaign.reference.logps(pairs, groups)
        assert recomputed and again == clean, how
        assert f"reference cache {path}: " in caplog.text and "recomputing it" in caplog.text, how
        assert campaign.reference.logps(pairs, groups) == (clean, False)  # the recomputed file is whole again
    campaign.reference.shutdown()


def test_a_reused_directory_with_another_loss_stops_naming_it_and_resume_never_starts_over(
    local_ray, run_config, tiny_model_dir
):
    from dpo_ray.campaign.failures import RunFinished, RunMismatch

    cfg = run_config
    cfg.train.max_steps, cfg.train.checkpoint_every = 2, 2
    pairs = make_pairs(24, seed=51)
    inputs = OfflineInputs(tiny_model_dir, tiny_model_dir, pairs[:16], pairs[16:])
    OfflineCampaign(cfg, inputs).run()
    run_dir = Path(cfg.output_dir)
    old_events = {p.name for p in (run_dir / "tensorboard").glob("events.*")}
    cfg.algo.loss_type = "ipo"
    with pytest.raises(
        RunMismatch, match=r"holds another run's checkpoint \(step_2\).*algo.loss_type: 'sigmoid' -> 'ipo'"
    ):
        OfflineCampaign(cfg, inputs).run()
    cfg.resume = "never"
    assert OfflineCampaign(cfg, inputs).run().resumed_from is None
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]  # the old run's rows are gone, not mixed in
    assert old_events and not old_events & {p.name for p in (run_dir / "tensorboard").glob("events.*")}
    assert len((run_dir / "attempts.jsonl").read_text().splitlines()) == 1
    cfg.resume = "auto"
    with pytest.raises(RunFinished, match=r"holds this run, finished at .* \(2 steps\)"):
        OfflineCampaign(cfg, inputs).run()  # the same run again: nothing to do
    cfg.train.max_steps = 4  # train longer: at a constant learning rate the same run, continued from its checkpoint
    assert OfflineCampaign(cfg, inputs).run().resumed_from == "step_2"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
