"""`dpo-ray train [key=value ...]`: Hydra-composed configs from configs/, overridable on the command line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

USAGE = """usage: dpo-ray train [OVERRIDE ...]     offline DPO on a preference dataset (configs/train.yaml)
       dpo-ray online [OVERRIDE ...]    online / iterative DPO: vLLM samples -> rewards -> pairs -> DPO -> weight sync
                                        (configs/online.yaml)
       dpo-ray report RUN_DIR           rebuild RUN_DIR/report.md and its plots (every run writes one when it ends)
       dpo-ray submit [OPTIONS] {train,online} [OVERRIDE ...]
                                        the same, as a Ray job on an existing cluster (dpo-ray submit --help)

Overrides are Hydra's: key=value (algo.beta=0.2 cluster.policy_ranks=2) or group=preset (train=default).
Both default runs use the embedded number-words task and print what changed.
"""


def config_dir() -> Path:
    """configs/ beside the package (an editable or source install), or DPO_RAY_CONFIG_DIR."""
    return Path(os.environ.get("DPO_RAY_CONFIG_DIR", Path(__file__).resolve().parent.parent / "configs"))


def compose(overrides: list[str], config_name: str = "train"):
    """The typed RunConfig of configs/<config_name>.yaml with these overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from .config import register

    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return OmegaConf.to_object(hydra_compose(config_name=config_name, overrides=overrides))


def help_text() -> str:
    from .config import describe

    groups = []
    for group in sorted(p for p in config_dir().iterdir() if p.is_dir()):
        groups.append(f"  {group.name}: {', '.join(sorted(f.stem for f in group.glob('*.yaml')))}")
    return (
        USAGE
        + "\npresets (group=name):\n"
        + "\n".join(groups)
        + "\n\noptions (key=default  help):\n"
        + "\n".join(describe())
    )


def train(overrides: list[str]) -> int:
    from .campaign.offline import OfflineCampaign
    from .campaign.summary import finish, load_trained_model, task_metrics
    from .report.markdown import write_report
    from .workers.models import load_tokenizer

    cfg = compose(overrides)
    campaign = OfflineCampaign(cfg)
    result = campaign.run()
    inputs, before, after = campaign.inputs, dict(result.before), dict(result.after)
    if inputs.task is not None:
        tokenizer = load_tokenizer(inputs.model_path)
        start_model = load_trained_model(Path(inputs.model_path), inputs.model_path)
        before.update(task_metrics(start_model, tokenizer, inputs.task, cfg.task.samples_per_prompt, cfg.train.seed))
        final = load_trained_model(result.final_model, inputs.model_path)
        after.update(task_metrics(final, tokenizer, inputs.task, cfg.task.samples_per_prompt, cfg.train.seed))
    steps = result.step_seconds
    median = sorted(steps)[len(steps) // 2] if steps else float("nan")
    table = finish(result.run_dir, before, after, {"steps": len(steps), "median_step_seconds": median})
    print(
        f"\nfinal model: {result.final_model}\nmetrics: {result.run_dir / 'metrics.jsonl'}  "
        f"({len(steps)} steps, median {median:.3f}s/step on {cfg.cluster.policy_ranks} policy ranks)\n"
        f"report: {write_report(result.run_dir)}\n\n{table}"
    )
    return 0


def online(overrides: list[str]) -> int:
    from .campaign.atomic import write_text
    from .campaign.online import OnlineCampaign
    from .campaign.summary import format_rounds
    from .report.markdown import write_report

    cfg = compose(overrides, "online")
    result = OnlineCampaign(cfg).run()
    table = format_rounds(result.rounds)
    write_text(result.run_dir / "summary.md", table + "\n")
    resumed = f" (resumed after round {result.resumed_from})" if result.resumed_from else ""
    print(
        f"\nfinal model: {result.final_model}{resumed}\nrounds: {result.run_dir / 'rounds.jsonl'}, "
        f"samples and pairs per round: {result.run_dir / 'rounds'}\nreport: {write_report(result.run_dir)}\n\n{table}"
    )
    return 0


def report(arguments: list[str]) -> int:
    if len(arguments) != 1:
        print("usage: dpo-ray report RUN_DIR", file=sys.stderr)
        return 2
    from .report.markdown import write_report

    try:
        print(write_report(Path(arguments[0])))
    except ValueError as e:
        print(f"dpo-ray report: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or (argv[0] != "submit" and ("--help" in argv or "-h" in argv)):
        print(help_text())
        return 0
    command, overrides = argv[0], argv[1:]
    if command == "submit":
        from .submit import USAGE as SUBMIT_USAGE
        from .submit import submit

        if not overrides or overrides[0] in ("-h", "--help"):
            print(SUBMIT_USAGE)
            return 0
        return submit(overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if command in ("train", "online", "report"):
        return {"train": train, "online": online, "report": report}[command](overrides)
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
