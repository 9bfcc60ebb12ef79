"""`dpo-ray COMMAND [key=value ...]`: the command line. Options are composed and validated (dpo_ray/compose.py)
before anything starts, so a bad one fails in seconds with a one-line message and exit status 2."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

USAGE = """usage: dpo-ray train [OVERRIDE ...]     offline DPO on a preference dataset
       dpo-ray online [OVERRIDE ...]    online / iterative DPO: vLLM samples -> rewards -> pairs -> DPO -> weight sync
       dpo-ray campaign FILE.yaml [OVERRIDE ...]
                                        stages of train / online runs in order, each from the last one's model;
                                        a rerun skips finished stages (configs/campaign/embedded.yaml)
       dpo-ray report RUN_DIR           rebuild RUN_DIR/report.md and its plots (every run writes one when it ends)
       dpo-ray plan [train|online] [OVERRIDE ...] [--nodes N ...]
                                        where every actor goes and whether it fits in memory (dpo-ray plan --help)
       dpo-ray plan campaign FILE.yaml [OVERRIDE ...] [--nodes N ...]
                                        the plan of every stage of a campaign
       dpo-ray submit [OPTIONS] {train,online} [OVERRIDE ...]
                                        the same, as a Ray job on an existing cluster (dpo-ray submit --help)
       dpo-ray {train,online} [OVERRIDE ...] --help
                                        every option with the value this command would run with
       dpo-ray {train,online} [OVERRIDE ...] --cfg
                                        the whole composed configuration as YAML, without running it

Overrides are Hydra's: key=value (algo.beta=0.2 cluster.policy_ranks=2) or group=preset (algo=dpo cluster=multi_node);
+experiment=imdb_sentiment adds an experiment. With no overrides both commands run the built-in embedded task with
its recipe; a model of your own (model.path=DIR) gets the defaults listed below.
"""


def help_text(command: str | None = None, overrides: list[str] | None = None) -> str:
    """The usage, the presets, and every option: with a command, at the value that command would run with."""
    from .compose import compose, presets
    from .options import describe
    from .schema import RunConfig
    from .tasks.registry import MODELS

    groups = "\n".join(f"  {group}: {', '.join(names)}" for group, names in presets().items())
    if command is None:
        recipes = "; ".join(f"model.path={n}: {', '.join(b.recipes.values())}" for n, b in MODELS.items() if b.recipes)
        title = f"options (key=default  help  [allowed]); built-in models apply their recipe presets ({recipes})"
        lines = describe(RunConfig)
    else:
        title = f"options of `{' '.join(['dpo-ray', command, *(overrides or [])])}` (key=value  help  [allowed]  "
        title += "(schema default, where it differs))"
        lines = describe(RunConfig, compose(overrides or [], command))
    return f"{USAGE}\npresets (group=name):\n{groups}\n\n{title}:\n" + "\n".join(lines)


def composed_yaml(command: str, overrides: list[str]) -> str:
    from dataclasses import asdict

    import yaml

    from .compose import compose

    return yaml.safe_dump(_plain(asdict(compose(overrides, command))), sort_keys=False)


def _plain(value):
    """Choices as their plain strings, so the YAML reads as a preset would."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, str) else value


def train(overrides: list[str]) -> int:
    from . import api

    cfg = api.config(*overrides, command="train")  # before torch or Ray load: a bad option fails in seconds
    result = api.train(cfg)
    if result.nothing_ran:
        return _nothing_ran("train", result)
    from .campaign.summary import step_timing

    timing = step_timing(result.run_dir)
    print(
        f"\nfinal model: {result.final_model}\nmetrics: {result.run_dir / 'metrics.jsonl'}  "
        f"({timing['steps']} steps, median {timing['median_step_seconds']:.3f}s/step on "
        f"{cfg.cluster.policy_ranks} policy ranks)\n"
        f"report: {result.report}{_kept_at(cfg.output_dir)}\n\n{result.summary}"
    )
    return 0


def _kept_at(output_dir: str) -> str:
    """Where a run kept in object storage is, beside the local paths printed (its mirror's)."""
    from .run_storage import is_uri

    return f"\nkept at {output_dir} (the paths above are its local mirror)" if is_uri(output_dir) else ""


def online(overrides: list[str]) -> int:
    from . import api

    cfg = api.config(*overrides, command="online")  # before torch or Ray load: a bad option fails in seconds
    result = api.online(cfg)
    if result.nothing_ran:
        return _nothing_ran("online", result)
    resumed = f" (resumed after round {result.resumed_from})" if result.resumed_from else ""
    print(
        f"\nfinal model: {result.final_model}{resumed}\nrounds: {result.run_dir / 'rounds.jsonl'}, "
        f"samples and pairs per round: {result.run_dir / 'rounds'}\nreport: {result.report}"
        f"{_kept_at(cfg.output_dir)}\n\n{result.summary}"
    )
    return 0


def campaign(arguments: list[str]) -> int:
    from . import api
    from .stages import split_arguments

    path, overrides = split_arguments(arguments)
    result = api.campaign(path, *overrides)
    ran = [name for name in result.stages if name not in result.skipped]
    print(
        f"\ncampaign: {result.campaign_dir} (ran: {', '.join(ran) or 'none'}; skipped, finished: "
        f"{', '.join(result.skipped) or 'none'})\nlineage: {result.lineage}\n\n{result.summary.read_text()}"
    )
    return 0


def _nothing_ran(command: str, result) -> int:
    """An identical rerun: its table again, in seconds, not a second run."""
    said, *notes = result.nothing_ran.splitlines()
    print(
        f"dpo-ray {command}: {said}: nothing to do (resume=never runs it again)",
        *notes,
        f"\n{result.summary}",
        sep="\n",
    )
    return 0


def plan(arguments: list[str]) -> int:
    from . import api
    from .planning.command import parse

    if arguments and arguments[0] == "campaign":
        return plan_campaign(arguments[1:])
    command, overrides, flags = parse(arguments)
    made = api.plan(api.config(*overrides, command=command), command, **flags)
    print(made)
    return 0 if made.fits else 1


def plan_campaign(arguments: list[str]) -> int:
    """Each stage's plan, from its own overrides (a later stage's model has its parent's shape: model.path's)."""
    from . import api
    from .planning.command import parse
    from .stages import read_campaign, split_arguments

    _, extra, flags = parse(arguments)
    path, overrides = split_arguments(extra)
    fits = True
    for stage in read_campaign(path, overrides).stages:
        made = api.plan(api.config(*stage.overrides, command=stage.command), stage.command, **flags)
        print(f"## stage {stage.name}: dpo-ray {stage.command}\n{made}\n")
        fits = fits and made.fits
    return 0 if fits else 1


def report(arguments: list[str]) -> int:
    if len(arguments) != 1:
        print("usage: dpo-ray report RUN_DIR", file=sys.stderr)
        return 2
    from .report import write_report

    try:
        print(write_report(Path(arguments[0])))
    except ValueError as e:
        print(f"dpo-ray report: {e}", file=sys.stderr)
        return 2
    return 0


def launch_dir_importable() -> None:
    """Modules beside the user (reward.fn=my_rewards:score) import as they would with `python -m`: the launch
    directory goes on the driver's path (the actors get it through PYTHONPATH: workers/device.passed_on)."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)


def main(argv: list[str] | None = None) -> int:
    from .validation import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    launch_dir_importable()
    command, rest = (argv[0], argv[1:]) if argv else ("--help", [])
    overrides = [a for a in rest if a not in ("-h", "--help", "--cfg")]
    if command == "plan":
        from .planning.command import USAGE as PLAN_USAGE

        if "-h" in rest or "--help" in rest:
            print(PLAN_USAGE)
            return 0
        return _guarded(command, lambda: plan(rest), (ConfigError, ValueError))
    if command == "submit":
        from .submit import USAGE as SUBMIT_USAGE
        from .submit import submit

        if not rest or rest[0] in ("-h", "--help"):
            print(SUBMIT_USAGE)
            return 0
        return _guarded(command, lambda: submit(rest), (ConfigError,))
    if command in ("train", "online") and "--cfg" in rest:
        return _guarded(command, lambda: _print(composed_yaml(command, overrides), end=""), (ConfigError,))
    if command in ("-h", "--help") or "-h" in rest or "--help" in rest:
        scoped = command if command in ("train", "online") else None
        return _guarded(command, lambda: _print(help_text(scoped, overrides)), (ConfigError,))
    commands = {"train": train, "online": online, "report": report, "campaign": campaign}
    if command not in commands:
        print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .campaign.interrupts import install, interruption

    install()
    try:
        return _run_command(command, commands[command], rest)
    except BaseException as error:  # a signal's RunInterrupted, or one Ray's wait wrapped in a SystemError
        stop = interruption(error)
        if stop is None:
            raise
        print(
            f"dpo-ray {command}: stopped by {stop}; the groups and Ray were shut down. The same command resumes from "
            "the last checkpoint (resume=auto)",
            file=sys.stderr,
        )
        return stop.exit_code


def _run_command(command: str, run, rest: list[str]) -> int:
    from .campaign.failures import CheckpointError, DiskFull, RunDirInUse, RunMismatch
    from .campaign.preflight import InputError
    from .data.errors import DataError, NoUsableData
    from .groups.failures import GroupCallTimeout, NoCapacity
    from .groups.shared_dirs import NotShared
    from .planning import PlanError
    from .run_storage import StorageError
    from .validation import ConfigError
    from .workers.user_code import UserCodeError

    expected = (
        ConfigError,
        InputError,
        DataError,
        NoUsableData,
        PlanError,
        RunDirInUse,
        CheckpointError,
        RunMismatch,
        DiskFull,
        NotShared,
        UserCodeError,
        GroupCallTimeout,
        NoCapacity,
        StorageError,
    )
    return _guarded(command, lambda: run(rest), expected)


def _print(text: str, end: str = "\n") -> int:
    print(text, end=end)
    return 0


def _guarded(command: str, run, expected: tuple) -> int:
    """run(), with the errors a user can fix printed as one line each (no traceback) and exit status 2."""
    try:
        return run()
    except expected as error:
        shown = error.cause if isinstance(getattr(error, "cause", None), expected) else error  # a Ray task's error
        lines = str(shown).splitlines() or [type(shown).__name__]
        lines += getattr(error, "__notes__", [])
        print(f"dpo-ray {command}: " + "\n  ".join(lines), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
