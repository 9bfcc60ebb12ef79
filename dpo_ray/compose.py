"""The run configuration a command will run: Hydra composes the presets in dpo_ray/configs/ (shipped inside the
package) with the command line's overrides; a built-in model's recipe is applied under them; unknown options fail,
also with Hydra's `+`; then the whole configuration is validated. `train`, `online`, `submit`, `plan`-like helpers
(the Slurm shape) all call `compose`, so a bad option fails in seconds, before Ray starts or a model loads."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from .report.trackers import report_names
from .schema import RunConfig, register
from .validation import ConfigError, closest, validate

COMMANDS = ("train", "online")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
RECIPE_GROUP = "recipe"


def compose(overrides: list[str], command: str = "train") -> RunConfig:
    """The validated RunConfig of `dpo-ray COMMAND OVERRIDES...`, or a ConfigError naming what is wrong."""
    if command not in COMMANDS:
        raise ConfigError(f"command {command!r}: must be one of {', '.join(COMMANDS)}")
    cfg = _compose(overrides, command)
    if not any(_key(o) == RECIPE_GROUP for o in overrides):
        from .tasks.registry import recipe

        name = recipe(cfg.model.path, command)
        if name:  # under every preset and override the user gave: theirs win
            cfg = _compose([f"{RECIPE_GROUP}={name}", *overrides], command)
    return validate(cfg)


NOT_PRESETS = ("campaign",)  # campaign files, which dpo-ray campaign runs, not config groups


def presets() -> dict[str, list[str]]:
    """Preset names by group (group=name on the command line)."""
    return {
        group.name: sorted(f.stem for f in group.glob("*.yaml"))
        for group in sorted(
            p for p in CONFIG_DIR.iterdir() if p.is_dir() and not p.name.startswith("_") and p.name not in NOT_PRESETS
        )
    }


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _as_dict_override(override: str) -> str:
    """A dict option set whole (data.columns={question:prompt}) as Hydra's forced override, which may add keys to the
    empty default (a plain one may not: the config is a struct)."""
    from .options import options

    dicts = {o.name for o in options(RunConfig) if isinstance(o.default, dict)}
    return f"++{override}" if not override.startswith(("+", "~")) and _key(override) in dicts else override


def _compose(overrides: list[str], command: str) -> RunConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    register()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            composed = hydra_compose(config_name=command, overrides=[_as_dict_override(o) for o in overrides])
        unknown = _unknown_keys(composed, RunConfig)
        if unknown:
            raise ConfigError("\n".join(_unknown(key) for key in unknown))
        cfg = OmegaConf.to_object(composed)
        if isinstance(cfg.algo.loss_type, list):  # TRL's list form, read as the same names joined by commas
            cfg.algo.loss_type = ",".join(str(name) for name in cfg.algo.loss_type)
        cfg.report_to = report_names(cfg.report_to) or ["none"]  # one name, or several joined by commas: a list
        return cfg
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(_message(error)) from None


def _unknown_keys(node: Any, schema: type, prefix: str = "") -> list[str]:
    """Keys that the schema does not have (Hydra's `+key=value` adds them even to a structured config)."""
    known = {f.name: f for f in fields(schema)}
    found = []
    for key in node:
        if key not in known:
            found.append(prefix + str(key))
        elif is_dataclass(known[key].default_factory):
            found += _unknown_keys(node[key], known[key].default_factory, f"{prefix}{key}.")
    return found


def _unknown(key: str) -> str:
    from .options import options

    names = [o.name for o in options(RunConfig)]
    sections = sorted({n.rsplit(".", 1)[0] for n in names if "." in n})
    hint = closest(key, names + sections) or " (dpo-ray --help lists every option)"
    return f"{key}: unknown option{hint}"


def _message(error: BaseException) -> str:
    """Hydra's and OmegaConf's errors as one line that names the option: unknown keys, wrong types, bad choices."""
    import re

    chain, cause = [], error
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = "\n".join(str(e) for e in chain)
    unknown = re.search(r"Could not override '([^']+)'", text)
    if unknown and re.search(r"Key '[^']+' (is )?not in", text):
        return _unknown(unknown.group(1))
    preset = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if preset:
        group, name = preset.groups()
        known = presets().get(group, [])
        return f"{group}={name}: no such preset{closest(name, known)} (presets: {', '.join(known)})"
    for e in chain:
        key = getattr(e, "full_key", None)
        if key:
            return f"{key}: {str(e).splitlines()[0]}"
    return str(error).strip()
