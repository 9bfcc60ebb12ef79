"""Normalise TRL's three preference formats (standard, conversational, implicit prompt) into one row type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import DataError

Messages = list[dict]
Text = str | Messages
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class PreferenceRow:
    prompt: Text
    chosen: Text
    rejected: Text
    source: str
    row: int

    @property
    def conversational(self) -> bool:
        return isinstance(self.chosen, list)


def _check_messages(value: list, source: str, row: int, name: str) -> Messages:
    for i, message in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(message, dict):
            raise DataError(
                source,
                row,
                where,
                f"a message must be an object with 'role' and 'content', got {type(message).__name__}",
            )
        if message.get("role") not in ROLES:
            raise DataError(
                source, row, f"{where}.role", f"must be one of {', '.join(ROLES)}, got {message.get('role')!r}"
            )
        if not isinstance(message.get("content"), str):
            raise DataError(
                source, row, f"{where}.content", f"must be a string, got {type(message.get('content')).__name__}"
            )
    return value


def text_field(raw: dict, name: str, source: str, row: int) -> Text:
    if name not in raw or raw[name] is None:
        raise DataError(source, row, name, "missing")
    value = raw[name]
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _check_messages(value, source, row, name)
    raise DataError(source, row, name, f"must be a string or a list of messages, got {type(value).__name__}")


def is_empty(value: Text) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return not value or all(not m["content"].strip() for m in value)


def _split_implicit(chosen: Text, rejected: Text):
    """Implicit prompt: the shared leading messages (or text, backed off to a word boundary) are the prompt."""
    if isinstance(chosen, list):
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        return chosen[:n], chosen[n:], rejected[n:]
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if 0 < n < min(len(chosen), len(rejected)) and chosen[n - 1] == " ":
        n -= 1  # keep the space with the response, as TRL's extract_prompt does
    return chosen[:n], chosen[n:], rejected[n:]


def normalise(raw: Any, source: str, row: int) -> PreferenceRow:
    """One raw row -> PreferenceRow, or a DataError naming source, row and field."""
    if not isinstance(raw, dict):
        raise DataError(
            source, row, "<row>", f"a row must be an object with prompt/chosen/rejected, got {type(raw).__name__}"
        )
    chosen = text_field(raw, "chosen", source, row)
    rejected = text_field(raw, "rejected", source, row)
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise DataError(source, row, "rejected", "chosen and rejected must both be strings or both be message lists")
    if raw.get("prompt") is None:
        prompt, chosen, rejected = _split_implicit(chosen, rejected)
    else:
        prompt = text_field(raw, "prompt", source, row)
        if isinstance(prompt, str) != isinstance(chosen, str):
            raise DataError(source, row, "prompt", "prompt and responses must both be strings or both be message lists")
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if is_empty(value):
            raise DataError(source, row, name, "empty response")
    if isinstance(chosen, list) and isinstance(prompt, list) and not prompt:
        raise DataError(source, row, "prompt", "no prompt messages")
    return PreferenceRow(prompt=prompt, chosen=chosen, rejected=rejected, source=source, row=row)
