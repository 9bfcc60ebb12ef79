"""How an option is declared and read back: its one default, one-line help and allowed values (a Choice's members,
or numeric Bounds), and the walk over a schema's leaf options that help, validation and tests share."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any


class Choice(str, Enum):
    """A string option with a fixed set of values: compares equal to, prints as, and serialises to its value."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def _missing_(cls, value: object) -> Choice | None:
        # Hydra reads `deepspeed.zero_stage=0` as the number 0: the choice spelt "0" is meant.
        return cls.__members__.get(str(value)) if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Bounds:
    """The numbers an option allows: a range (each end open or closed, or absent), plus single values allowed
    outside it (such as -1 for "all" or None for "no limit")."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple = ()

    def allows(self, value: Any) -> bool:
        if value in self.also and (value is None or not isinstance(value, bool)):
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low:g}"
        else:
            text = f"{'<' if self.high_open else '<='} {self.high:g}"
        extra = ["null" if v is None else repr(v) for v in self.also]
        return text + (f", or {' or '.join(extra)}" if extra else "")


POSITIVE = Bounds(0, low_open=True)
NON_NEGATIVE = Bounds(0)
AT_LEAST_ONE = Bounds(1)
SHARE = Bounds(0, 1)  # a fraction, ends included
OPEN_SHARE = Bounds(0, 1, low_open=True, high_open=True)


def opt(default: Any, help: str, bounds: Bounds | None = None) -> Any:
    """A config field with its one default, its one-line help, and (for numbers) the values it allows."""
    metadata = {"help": help, "bounds": bounds}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def sub(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


@dataclass(frozen=True)
class Option:
    """One leaf option of the schema, for help and validation."""

    name: str  # dotted: algo.beta
    default: Any
    help: str
    type: Any  # the annotation, resolved
    bounds: Bounds | None


def options(cls: type, prefix: str = "") -> list[Option]:
    """Every leaf option of the schema, depth first, in declaration order."""
    import typing

    hints = typing.get_type_hints(cls)
    found = []
    for f in fields(cls):
        if f.default_factory is not MISSING and is_dataclass(f.default_factory):
            found += options(f.default_factory, prefix + f.name + ".")
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        found.append(
            Option(prefix + f.name, default, f.metadata.get("help", ""), hints[f.name], f.metadata.get("bounds"))
        )
    return found


def value_at(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def allowed_values(option: Option) -> str:
    """What an option accepts, in words: its choices or its bounds (empty when anything of its type goes)."""
    if isinstance(option.type, type) and issubclass(option.type, Choice):
        return "one of " + ", ".join(m.value for m in option.type)
    return str(option.bounds) if option.bounds else ""


def shown(value: Any) -> str:
    return repr(str(value)) if isinstance(value, Choice) else repr(value)


def describe(schema: type, cfg: Any = None) -> list[str]:
    """One line per option: dotted name=value, help, allowed values; with a composed cfg, its values, and the schema
    default beside each value that differs from it."""
    lines = []
    for o in options(schema):
        value = o.default if cfg is None else value_at(cfg, o.name)
        allowed = allowed_values(o)
        note = f" [{allowed}]" if allowed else ""
        changed = f" (default {shown(o.default)})" if value != o.default else ""
        lines.append(f"  {o.name + '=' + shown(value):<42} {o.help}{note}{changed}")
    return lines
