"""A multi-stage campaign file (`dpo-ray campaign FILE.yaml`): stages run in order, each an ordinary `train` or
`online` run with its own overrides, in a run directory of its own under the campaign's, starting from the previous
stage's final model unless it names one. Read and checked here before anything runs; each stage's key (its command,
overrides and parent's key) says whether a finished stage can be skipped; lineage.json and campaign.md record the
models and compare the stages."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .compose import compose
from .data.pairs_cache import source_files
from .file_digests import sha256
from .run_storage import is_uri
from .validation import ConfigError

COMMANDS = ("train", "online")
STAGE_KEYS = ("name", "command", "overrides")
FILE_KEYS = ("output_dir", "overrides", "stages")
STAGE_STATE = "stage.json"  # in each stage's run directory: its key, and whether it finished
LINEAGE, CAMPAIGN_MD = "lineage.json", "campaign.md"
# What a stage's run reads from files (their hashes go into the lineage).
DATA_OPTIONS = ("data.train_files", "data.eval_files", "online.prompt_files", "online.eval_prompt_files")


@dataclass
class Stage:
    name: str
    command: str
    overrides: list[str]  # the file's shared overrides, then the stage's own
    names_model: bool  # its own overrides name the model it starts from (model.path or model.start_from)


@dataclass
class CampaignFile:
    path: Path
    output_dir: Path
    stages: list[Stage] = field(default_factory=list)


def _strings(value, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: overrides must be a list of KEY=VALUE strings, got {value!r}")
    return list(value)


def split_arguments(arguments: list[str]) -> tuple[str, list[str]]:
    """(the campaign file, the overrides given for every stage) from `campaign [OVERRIDE ...] FILE [OVERRIDE ...]`."""
    files = [a for a in arguments if "=" not in a]
    if len(files) != 1:
        raise ConfigError(
            f"campaign: give one campaign file (and KEY=VALUE overrides for every stage), got {arguments}"
        )
    return files[0], [a for a in arguments if "=" in a]


def read_campaign(path: str | Path, extra: list[str] | None = None) -> CampaignFile:
    """The campaign file, every stage composed and validated as its command would be (a bad one names the stage and
    the option), before any stage runs; extra: overrides for every stage, after its own (the command line's)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: not a readable campaign file ({error})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), list) or not raw["stages"]:
        raise ConfigError(f"{path}: a campaign file holds 'stages', a list of {{name, command, overrides}}")
    unknown = sorted(set(raw) - set(FILE_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; a campaign file holds {', '.join(FILE_KEYS)}")
    shared = _strings(raw.get("overrides"), f"{path}: overrides")
    if is_uri(str(raw.get("output_dir") or "")):  # its stages hand each other local paths (the final models)
        raise ConfigError(
            f"{path}: output_dir={raw['output_dir']}: a campaign's directory is a path; its stages' runs "
            "may each be kept in object storage by running them one by one (dpo-ray train/online)"
        )
    campaign = CampaignFile(path, Path(raw.get("output_dir") or f"runs/campaign/{path.stem}"))
    seen: set[str] = set()
    for k, entry in enumerate(raw["stages"], 1):
        where = f"{path}: stage {k}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: a stage is a mapping of {', '.join(STAGE_KEYS)}, got {entry!r}")
        name, command = str(entry.get("name") or f"stage{k}"), entry.get("command")
        where = f"{path}: stage {k} ({name})"
        unknown = sorted(set(entry) - set(STAGE_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; a stage holds {', '.join(STAGE_KEYS)}")
        if command not in COMMANDS:
            raise ConfigError(f"{where}: command={command!r}: must be one of {', '.join(COMMANDS)}")
        if name in seen or "/" in name or name.startswith("."):
            raise ConfigError(f"{where}: name {name!r} must be unique and a plain directory name")
        seen.add(name)
        own = _strings(entry.get("overrides"), f"{where}: overrides")
        overrides = shared + own + list(extra or [])
        if any(o.split("=", 1)[0].lstrip("+~") == "output_dir" for o in overrides):
            raise ConfigError(f"{where}: output_dir is the campaign's to give (output_dir/{name}); drop it")
        try:
            compose(overrides, command)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        keys = {o.split("=", 1)[0].lstrip("+~") for o in own}  # a model the file names for all is the first's start
        campaign.stages.append(Stage(name, command, overrides, bool(keys & {"model.path", "model.start_from"})))
    return campaign


def stage_key(stage: Stage, parent_key: str) -> str:
    """What a stage's result depends on, as a digest: its command and overrides, and its parent's key (a parent run
    again, or changed, makes every later stage run again)."""
    text = json.dumps([stage.command, stage.overrides, parent_key])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: str) -> str:
    """A data source's sha256 (a directory's: over its files' own, in name order; '' for a dataset name)."""
    files = source_files(path)
    if not files:
        return ""
    if len(files) == 1 and files[0] == Path(path).expanduser():
        return sha256(files[0])
    return hashlib.sha256("".join(sha256(f) for f in files).encode()).hexdigest()


def headline(command: str, run_dir: Path, metrics: list[dict], rounds: list[dict]) -> dict[str, float]:
    """A stage's headline metrics: an online stage's last round's held-out values; an offline stage's held-out values
    after training (summary.json, the task's accuracy included), else its last evaluation."""
    if command == "online":
        last = rounds[-1] if rounds else {}
        return {k: v for k, v in last.items() if k.startswith("eval/") and isinstance(v, (int, float))}
    summary = run_dir / "summary.json"
    after = json.loads(summary.read_text()).get("after", {}) if summary.exists() else {}
    if not after:
        evaluations = [row for row in metrics if any(k.startswith("eval_") for k in row)]
        after = evaluations[-1] if evaluations else {}
    return {k: v for k, v in after.items() if k.startswith(("eval_", "task/")) and isinstance(v, (int, float))}


# campaign.md's columns, where a stage has them (lineage.json keeps every headline metric)
COLUMNS = (
    ("task/greedy_accuracy", "task greedy accuracy"),
    ("eval_rewards/accuracies", "held-out reward accuracy"),
    ("eval_rewards/margins", "held-out margin"),
    ("eval/greedy_reward", "held-out greedy reward"),
    ("eval/sampled_reward", "held-out sampled reward"),
    ("eval/kl", "KL to the stage's start"),
    ("eval/kl_to_round_reference", "KL to the last round's reference"),
    ("eval/win_rate", "win rate"),
    ("eval/length_controlled_win_rate", "length-controlled win rate"),
)


def campaign_markdown(lineage: list[dict], plot: str = "") -> str:
    """One table comparing the stages (each stage's parent and headline metrics), and the plot across them."""
    columns = [(k, label) for k, label in COLUMNS if any(k in entry["metrics"] for entry in lineage)]
    lines = ["# Campaign", "", "| stage | command | ran | parent | " + " | ".join(label for _, label in columns) + " |"]
    lines.append("|" + "---|" * (4 + len(columns)))
    for entry in lineage:
        values = [entry["metrics"].get(k, math.nan) for k, _ in columns]
        cells = ["" if math.isnan(v) else f"{v:.3f}" for v in values]
        parent = entry["parent_stage"] or entry["parent"]
        ran = "skipped (finished)" if entry["skipped"] else "ran"
        lines.append(f"| {entry['stage']} | {entry['command']} | {ran} | {parent} | " + " | ".join(cells) + " |")
    if plot:
        lines += ["", f"![held-out reward across stages and rounds]({plot})"]
    return "\n".join(lines) + "\n"


def campaign_plot(stages: list[tuple[str, list[dict]]], path: Path) -> Path | None:
    """The online stages' held-out greedy and sampled reward and KL to each stage's start, round after round across
    stages (a stage's round 0 is its start, the previous stage's final model), a line between stages."""
    drawn = [(name, [row for row in rows if "eval/greedy_reward" in row]) for name, rows in stages]
    drawn = [(name, rows) for name, rows in drawn if rows]
    if not drawn:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (reward_axis, kl_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = 0
    for name, rows in drawn:
        xs = list(range(x, x + len(rows)))
        for key, style in (("eval/greedy_reward", "-o"), ("eval/sampled_reward", "--o")):
            reward_axis.plot(xs, [row.get(key, math.nan) for row in rows], style, label=f"{name} {key[5:]}")
        kl_axis.plot(xs, [row.get("eval/kl", math.nan) for row in rows], "-o", label=name)
        for axis in (reward_axis, kl_axis):
            axis.axvline(x - 0.5, color="grey", linewidth=0.6)
        x += len(rows)
    reward_axis.set(xlabel="round, stage after stage", ylabel="held-out reward")
    kl_axis.set(xlabel="round, stage after stage", ylabel="KL to the stage's start (nats/response)")
    for axis in (reward_axis, kl_axis):
        axis.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
