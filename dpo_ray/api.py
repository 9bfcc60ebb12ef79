"""The Python front door: `config`, `train`, `online` and `plan` run exactly what the command line runs (the CLI is
argument parsing and printing over these calls), from a notebook or a pipeline step."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .compose import compose
from .run_files import METRICS, REPORT, ROUNDS, SUMMARY_MD
from .schema import Resume, RunConfig
from .validation import validate


def config(*overrides: str, command: str = "train") -> RunConfig:
    """The validated configuration of `dpo-ray COMMAND OVERRIDES...`, composed as the CLI composes it (presets, the
    built-in model's recipe, validation): config("algo.beta=0.2", "model.path=/models/llama") -> RunConfig."""
    return compose(list(overrides), command)


@dataclass
class RunResult:
    """What a finished run left in its directory."""

    run_dir: Path
    final_model: Path  # a Hugging Face model directory (transformers' from_pretrained reads it)
    summary: str  # the table the CLI prints at the end (also run_dir/summary.md)
    report: Path  # run_dir/report.md, with its plots
    metrics: list[dict] = field(default_factory=list)  # metrics.jsonl: a row per logged step and per evaluation
    rounds: list[dict] = field(default_factory=list)  # online: rounds.jsonl, a row per round (round 0: the start)
    resumed_from: str | int | None = None  # the checkpoint (offline) or round (online) the last attempt started from
    nothing_ran: str = ""  # why nothing ran ("" when it ran): the directory held this very run, finished

    @classmethod
    def of_directory(cls, run_dir: Path, **known) -> RunResult:
        summary = run_dir / SUMMARY_MD
        return cls(
            run_dir=run_dir,
            final_model=known.pop("final_model", run_dir / "final"),
            summary=known.pop("summary", summary.read_text(encoding="utf-8").rstrip("\n") if summary.exists() else ""),
            report=known.pop("report", run_dir / REPORT),
            metrics=_json_lines(run_dir / METRICS),
            rounds=_json_lines(run_dir / ROUNDS),
            **known,
        )


def train(cfg: RunConfig | None = None, train_dataset: Any = None, eval_dataset: Any = None) -> RunResult:
    """Offline DPO (or KTO), as `dpo-ray train`: cfg from config(...) (None: the embedded default). train_dataset and
    eval_dataset take the place of data.train_files and data.eval_files: a datasets.Dataset or a list of dicts in any
    layout the files accept (prompt/chosen/rejected as text or messages, TRL's implicit prompt, KTO's
    prompt/completion/label). Without held-out rows, data.eval_fraction of the train rows is held out."""
    cfg = config(command="train") if cfg is None else validate(cfg)  # one changed in Python: checked before it runs
    from .campaign.failures import RunFinished
    from .campaign.inputs import offline_inputs
    from .campaign.offline import OfflineCampaign
    from .campaign.preflight import check_inputs
    from .campaign.summary import offline_summary
    from .report import write_report

    check_inputs(cfg, "train", train_dataset is not None)  # a missing model or file: before output_dir is made
    try:
        with run_directory(cfg) as cfg:  # before the data loads: a second run on it stops at once
            campaign = OfflineCampaign(cfg, offline_inputs(cfg, train_dataset, eval_dataset))
            result = campaign.run()
            table = offline_summary(result, campaign.inputs)
            report = write_report(result.run_dir, cfg.report_to, cfg.run_name)
    except RunFinished as done:
        return RunResult.of_directory(Path(done.run_dir), nothing_ran=_said(done))
    known = {"final_model": result.final_model, "summary": table, "report": report}
    return RunResult.of_directory(result.run_dir, resumed_from=result.resumed_from, **known)


@contextlib.contextmanager
def run_directory(cfg: RunConfig) -> Iterator[RunConfig]:
    """cfg's output_dir held for this run (one run at a time). An object-storage output_dir (s3://, gs://) is run in
    its local mirror, filled from the bucket first and uploaded after each checkpoint and at the end: the cfg
    yielded (a copy) names the mirror."""
    from .campaign.run_lock import run_dir_lock
    from .run_storage import is_uri, local_run_dir, mirrored

    uri = cfg.output_dir if is_uri(cfg.output_dir) else ""
    with run_dir_lock(local_run_dir(cfg.output_dir, cfg.cache_dir)):
        with mirrored(cfg.output_dir, cfg.cache_dir, download=cfg.resume != Resume.never) as run_dir:
            if not uri:
                yield cfg
                return
            cfg = copy.deepcopy(cfg)
            cfg.run_name = cfg.run_name or uri.rstrip("/").rsplit("/", 1)[-1]
            cfg.output_dir = str(run_dir)
            try:
                yield cfg
            except Exception as error:  # its messages name the mirror: say whose
                error.add_note(f"(output_dir={uri} runs in its local mirror {run_dir})")
                raise


def _said(error: BaseException) -> str:
    return "\n".join([str(error), *getattr(error, "__notes__", [])])


def online(cfg: RunConfig | None = None) -> RunResult:
    """Online / iterative DPO, as `dpo-ray online`: cfg from config(..., command="online") (None: the embedded
    default). The result's rounds hold one row per round."""
    cfg = config(command="online") if cfg is None else validate(cfg)
    from .campaign.failures import RunFinished
    from .campaign.online import OnlineCampaign
    from .campaign.preflight import check_inputs
    from .campaign.summary import online_summary
    from .report import write_report

    check_inputs(cfg, "online")  # a missing model or file stops the run before its output_dir is made
    try:
        with run_directory(cfg) as cfg:  # before the prompts load: a second run on it stops at once
            result = OnlineCampaign(cfg).run()
            table = online_summary(result)
            report = write_report(result.run_dir, cfg.report_to, cfg.run_name)
    except RunFinished as done:
        return RunResult.of_directory(Path(done.run_dir), nothing_ran=_said(done))
    known = {"final_model": result.final_model, "summary": table, "report": report}
    return RunResult.of_directory(result.run_dir, resumed_from=result.resumed_from, **known)


def plan(
    cfg: RunConfig | None = None,
    command: str = "train",
    nodes: int = 0,
    gpus_per_node: int = 8,
    gpu_memory_gib: float = 80.0,
    cpus_per_node: float = 128.0,
    memory_gib: float = 1024.0,
):
    """The plan of `dpo-ray plan COMMAND`: where each actor lands and its memory by part, from the models' config.json
    alone (print(plan) shows it; plan.fits). With nodes, for that many identical nodes; without, for the Ray cluster
    at cluster.address (or RAY_ADDRESS) when one is named, else for this machine."""
    import os

    from .campaign.hub_models import resolve_hub_models
    from .campaign.preflight import check_reward_function
    from .planning.nodes import described_nodes, ray_nodes, this_machine
    from .planning.plan import make_plan, plan_models
    from .sizing.resources import group_needs, local_cpus, reference_group_needed

    cfg = config(command=command) if cfg is None else validate(cfg)
    resolve_hub_models(cfg, config_only=True)  # a plan reads config.json alone
    if command == "online":
        check_reward_function(cfg)  # as the run would, before it plans anything
    models = plan_models(cfg, command)
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS", "")
    if nodes:
        described = described_nodes(nodes, gpus_per_node, gpu_memory_gib, cpus_per_node, memory_gib)
        where, source = described, "as described by --nodes"
    elif address:
        import ray

        ray.init(address=address, log_to_driver=False)
        where, source = ray_nodes(), f"the Ray cluster at {address}"
        ray.shutdown()
    else:
        online = command == "online"
        needs = group_needs(cfg, reference_group_needed(cfg, online), online)
        where, source = this_machine(local_cpus(needs, online, os.cpu_count() or 1)), "this machine, a local Ray"
    return make_plan(cfg, command, where, models, source)


@dataclass
class CampaignResult:
    """What `dpo-ray campaign FILE.yaml` left: a run directory per stage under campaign_dir, the lineage of every
    model (lineage.json) and the stages compared (campaign.md)."""

    campaign_dir: Path
    stages: dict[str, RunResult]  # by stage name, in order
    skipped: list[str]  # the stages found finished with the same key, not run again
    lineage: Path
    summary: Path


def campaign(path: str | Path, *overrides: str) -> CampaignResult:
    """The stages of a campaign file in order, as `dpo-ray campaign FILE.yaml`: each a train or online run in
    campaign_dir/NAME, starting from the previous stage's final model unless its overrides name one. Every stage is
    composed and checked before the first runs. A stage found finished with the same key (its command, overrides and
    parent's key) is skipped; one interrupted resumes; one changed, or after a changed one, runs anew (its old run
    directory moved aside to NAME.replaced-N, never deleted). overrides apply to every stage, after its own."""
    from .atomic import write_text
    from .stages import (
        CAMPAIGN_MD,
        DATA_OPTIONS,
        LINEAGE,
        STAGE_STATE,
        campaign_markdown,
        campaign_plot,
        file_digest,
        headline,
        read_campaign,
        stage_key,
    )
    from .tasks.registry import MODELS, resolve_model

    plan = read_campaign(path, list(overrides))
    root = plan.output_dir.expanduser()
    root.mkdir(parents=True, exist_ok=True)
    parent_key, parent_model, parent_stage = "", "", ""
    results: dict[str, RunResult] = {}
    lineage, skipped = [], []
    for stage in plan.stages:
        key, run_dir = stage_key(stage, parent_key), root / stage.name
        overrides = [*stage.overrides, f"output_dir={run_dir}"]
        if parent_model and not stage.names_model:
            overrides.append(f"model.start_from={parent_model}")
        cfg = config(*overrides, command=stage.command)
        state_path = run_dir / STAGE_STATE
        state = json.loads(state_path.read_text()) if state_path.exists() else None
        if state is not None and state["key"] == key and state["finished"]:
            skipped.append(stage.name)
            results[stage.name] = RunResult.of_directory(run_dir)
        else:
            if run_dir.exists() and (state is None or state["key"] != key):
                n = 1
                while (root / f"{stage.name}.replaced-{n}").exists():
                    n += 1
                run_dir.rename(root / f"{stage.name}.replaced-{n}")
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(state_path, json.dumps({"key": key, "finished": False}))
            results[stage.name] = train(cfg) if stage.command == "train" else online(cfg)
            write_text(state_path, json.dumps({"key": key, "finished": True}))
        result = results[stage.name]
        files = [f for option in DATA_OPTIONS for f in _option(cfg, option)]
        if cfg.model.path in MODELS and stage.command == "train" and not cfg.data.train_files:
            task = resolve_model(cfg)  # a built-in task's own preference files (built once, cached)
            files += task.train_files + ([] if cfg.data.eval_files else task.eval_files)
        lineage.append(
            {
                "stage": stage.name,
                "command": stage.command,
                "model": str(result.final_model),
                "parent": parent_model or cfg.model.path,
                "parent_stage": parent_stage,
                "task": cfg.model.path if cfg.model.path in MODELS else "",
                "data": {f: file_digest(f) for f in files},
                "fingerprint": key,
                "skipped": stage.name in skipped,
                "metrics": headline(stage.command, run_dir, result.metrics, result.rounds),
            }
        )
        parent_key, parent_model, parent_stage = key, str(result.final_model), stage.name
    write_text(root / LINEAGE, json.dumps(lineage, indent=1) + "\n")
    rounds = [(name, result.rounds) for name, result in results.items()]
    plot = campaign_plot(rounds, root / "plots" / "campaign.png")
    write_text(root / CAMPAIGN_MD, campaign_markdown(lineage, "plots/campaign.png" if plot else ""))
    return CampaignResult(root, results, skipped, root / LINEAGE, root / CAMPAIGN_MD)


def _option(cfg: RunConfig, dotted: str) -> list[str]:
    section, name = dotted.split(".")
    return list(getattr(getattr(cfg, section), name))


def _json_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
