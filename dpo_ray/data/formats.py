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
    rejected: Text | None  # None: an unpaired row (KTO) until its mismatched completion is chosen
    source: str
    row: int
    label: bool | None = None  # KTO: whether chosen (the completion) is desirable; None for a pair

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
        _unicode(message["content"], source, row, f"{where}.content")
    return value


def _unicode(value: str, source: str, row: int, name: str) -> str:
    """value, if it is valid Unicode (JSON can carry lone surrogates, which no tokenizer takes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(source, row, name, f"not valid Unicode ({value[e.start]!r} at character {e.start})") from None
    return value


def text_field(raw: dict, name: str, source: str, row: int) -> Text:
    if name not in raw or raw[name] is None:
        raise DataError(source, row, name, "missing")
    value = raw[name]
    if isinstance(value, str):
        return _unicode(value, source, row, name)
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


# what data.columns may map a dataset's own columns onto
COLUMNS = ("prompt", "chosen", "rejected", "completion", "label", "system")
UNSUPPORTED = {
    "images": "image rows are not supported: dpo-ray trains text-only causal language models (drop the column)",
    "tools": "tool definitions are not supported: the chat template is applied without tools (drop the column)",
}


def mapped_columns(raw: Any, columns: dict[str, str]) -> Any:
    """A row with its columns renamed by data.columns, where the row has them (a mapped column replaces one of the
    target's name; a file that already has the target's name is left as it is)."""
    if not columns or not isinstance(raw, dict):
        return raw
    present = {k: target for k, target in columns.items() if k in raw}
    renamed = {k: v for k, v in raw.items() if k not in present.values()}
    renamed.update({target: raw[k] for k, target in present.items()})
    return renamed


# Words in a column's name that say which field it is; rejected is matched before chosen ("dispreferred").
NAME_HINTS = {
    "rejected": ("reject", "bad", "worse", "worst", "dispref", "los", "neg"),
    "chosen": ("chosen", "good", "better", "best", "pref", "win", "accept", "pos"),
    "label": ("label", "desirable", "kto"),
    "completion": ("completion", "response", "output", "answer"),
    "prompt": ("prompt", "question", "instruction", "query", "input", "context", "user"),
}


def suggested_columns(raw: dict, unpaired: bool) -> dict[str, str]:
    """data.columns for a row lacking fields: each absent field from a column whose name says it is that field, else
    the next column holding its kind of value (text or messages; true/false for a label), in the row's order."""
    wanted = ("prompt", "completion", "label") if unpaired else ("prompt", "chosen", "rejected")
    absent = [name for name in NAME_HINTS if name in wanted and raw.get(name) is None]
    free = [k for k in raw if k not in COLUMNS]
    mapping: dict[str, str] = {}
    for name in absent:
        found = next((k for k in free if any(h in k.lower() for h in NAME_HINTS[name])), None)
        if found:
            mapping[found] = name
            free.remove(found)
    for name in wanted:  # by kind of value, in the fields' own order
        if name not in absent or name in mapping.values():
            continue
        kind = (lambda v: isinstance(v, bool)) if name == "label" else (lambda v: isinstance(v, (str, list)))
        found = next((k for k in free if kind(raw[k])), None)
        if found:
            mapping[found] = name
            free.remove(found)
    return dict(sorted(mapping.items(), key=lambda item: wanted.index(item[1])))


def _missing(raw: dict, names: tuple[str, ...], source: str, row: int, unless_alone: bool = False) -> None:
    """A DataError for the first of names the row lacks, listing the other columns it has and the data.columns that
    maps them (with unless_alone, only when there are such columns)."""
    for name in names:
        if raw.get(name) is None:
            others = [k for k in raw if k not in COLUMNS]
            if unless_alone and not others:
                return
            if not others:
                raise DataError(source, row, name, "missing")
            hint = f"the row's columns: {', '.join(others)}"
            mapping = suggested_columns(raw, unpaired="completion" in names or "label" in names or "completion" in raw)
            if mapping:
                pairs = ",".join(f"{k}:{target}" for k, target in mapping.items())
                hint += f" (map them: data.columns={{{pairs}}})"
            raise DataError(source, row, name, f"missing; {hint}")


def _with_system(system: str, prompt: Text, chosen: Text, rejected: Text):
    """A system column as the conversation's first message: string rows become conversations (so the chat template
    places it); a conversation that starts with a system message keeps its own."""
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
        chosen, rejected = ([{"role": "assistant", "content": text}] for text in (chosen, rejected))
    if prompt and prompt[0]["role"] == "system":
        return prompt, chosen, rejected
    return [{"role": "system", "content": system}, *prompt], chosen, rejected


def _prompt_of_conversations(prompt: str, chosen: Messages, rejected: Messages, source: str, row: int):
    """A string prompt beside conversations that repeat it (UltraFeedback binarized): the prompt is the
    conversations' shared leading messages, whose last user turn must be the string prompt."""
    messages, chosen, rejected = _split_implicit(chosen, rejected)
    users = [m["content"] for m in messages if m["role"] == "user"]
    if not users:
        raise DataError(
            source,
            row,
            "prompt",
            "a string prompt beside message lists that share no user turn: give the prompt as "
            "messages, or responses as strings",
        )
    if users[-1].strip() != prompt.strip():
        raise DataError(
            source,
            row,
            "prompt",
            f"the string prompt {prompt[:60]!r} differs from the conversations' shared user turn {users[-1][:60]!r}",
        )
    return messages, chosen, rejected


def _unpaired(raw: dict, source: str, row: int) -> PreferenceRow:
    """TRL's unpaired layout (KTO): prompt, completion, and a bool label saying whether the completion is desirable."""
    _missing(raw, ("prompt", "completion", "label"), source, row)
    label = raw["label"]
    if not isinstance(label, bool):
        raise DataError(source, row, "label", f"must be true or false, got {label!r}")
    prompt, completion = text_field(raw, "prompt", source, row), text_field(raw, "completion", source, row)
    if isinstance(prompt, str) != isinstance(completion, str):
        raise DataError(source, row, "completion", "prompt and completion must both be strings or both be messages")
    if is_empty(completion):
        raise DataError(source, row, "completion", "empty completion")
    system = raw.get("system")
    if isinstance(system, str) and system.strip():
        prompt, completion, _ = _with_system(system, prompt, completion, completion)
    return PreferenceRow(prompt, completion, None, source, row, label)


def normalise(raw: Any, source: str, row: int, columns: dict[str, str] | None = None) -> PreferenceRow:
    """One raw row (its columns renamed by columns) -> PreferenceRow, or a DataError naming source, row and field."""
    if not isinstance(raw, dict):
        raise DataError(
            source, row, "<row>", f"a row must be an object with prompt/chosen/rejected, got {type(raw).__name__}"
        )
    raw = mapped_columns(raw, columns or {})
    for name, reason in UNSUPPORTED.items():
        if raw.get(name):
            raise DataError(source, row, name, reason)
    if "completion" in raw or "label" in raw:
        return _unpaired(raw, source, row)
    _missing(raw, ("chosen", "rejected"), source, row)
    chosen = text_field(raw, "chosen", source, row)
    rejected = text_field(raw, "rejected", source, row)
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise DataError(source, row, "rejected", "chosen and rejected must both be strings or both be message lists")
    if raw.get("prompt") is None:
        prompt, chosen, rejected = _split_implicit(chosen, rejected)
        if is_empty(prompt):  # no shared start: the prompt is likely in a column of another name
            _missing(raw, ("prompt",), source, row, unless_alone=True)
    else:
        prompt = text_field(raw, "prompt", source, row)
        if isinstance(prompt, str) and isinstance(chosen, list):
            prompt, chosen, rejected = _prompt_of_conversations(prompt, chosen, rejected, source, row)
        elif isinstance(prompt, str) != isinstance(chosen, str):
            raise DataError(source, row, "prompt", "a message-list prompt needs message-list responses")
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if is_empty(value):
            raise DataError(source, row, name, "empty response")
    if isinstance(chosen, list) and isinstance(prompt, list) and not prompt:
        raise DataError(source, row, "prompt", "no prompt messages")
    system = raw.get("system")
    if system is not None and not isinstance(system, str):
        raise DataError(source, row, "system", f"must be a string, got {type(system).__name__}")
    if system and system.strip():
        prompt, chosen, rejected = _with_system(system, prompt, chosen, rejected)
    return PreferenceRow(prompt=prompt, chosen=chosen, rejected=rejected, source=source, row=row)
