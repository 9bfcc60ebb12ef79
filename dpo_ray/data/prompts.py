"""Prompt sources for online rounds: a 'prompt' field per row (a string or a list of messages), validated; and a
held-out judge's fixed baseline, a 'response' per held-out prompt."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .errors import DataError, DataReport, ErrorPolicy, NoUsableData
from .formats import Text, is_empty, mapped_columns, text_field
from .loading import iter_rows


def load_prompts(sources: Sequence[Any], on_error: str = "raise", columns: dict[str, str] | None = None) -> list[Text]:
    """Every row's prompt (columns renamed by columns: data.columns); a malformed row raises a DataError naming file,
    row and field, or is skipped and counted."""
    policy = ErrorPolicy(on_error, DataReport())
    prompts: list[Text] = []
    for spec in sources:
        for source, index, raw in iter_rows(spec):
            try:
                if isinstance(raw, DataError):
                    raise raw
                if not isinstance(raw, dict):
                    raise DataError(
                        source, index, "<row>", f"a row must be an object with a 'prompt', got {type(raw).__name__}"
                    )
                raw = mapped_columns(raw, dict(columns or {}))
                prompt = text_field(raw, "prompt", source, index)
                if is_empty(prompt):
                    raise DataError(source, index, "prompt", "empty prompt")
                prompts.append(prompt)
            except DataError as error:
                policy.handle(error)
    if not prompts:
        raise NoUsableData(f"no usable prompts in {', '.join(map(str, sources))}: {policy.report.summary()}")
    return prompts


def prompt_text(prompt: Text) -> str:
    """The text a rule reward reads: the prompt itself, or the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else prompt[-1]["content"]


def load_reference_answers(source: str, prompts: Sequence[Text]) -> list[str]:
    """The baseline answer to each of prompts, from a file of {prompt, response} rows (a response string, or an
    assistant message list); a malformed row raises a DataError naming it, a prompt the file does not answer a
    ValueError naming the file and the prompt."""
    answers: dict[str, str] = {}
    for path, index, raw in iter_rows(source):
        if isinstance(raw, DataError):
            raise raw
        if not isinstance(raw, dict):
            raise DataError(path, index, "<row>", f"a row must be an object, got {type(raw).__name__}")
        prompt, response = text_field(raw, "prompt", path, index), text_field(raw, "response", path, index)
        answers[json.dumps(prompt)] = response if isinstance(response, str) else response[-1]["content"]
    missing = [p for p in prompts if json.dumps(p) not in answers]
    if missing:
        first = prompt_text(missing[0])
        raise ValueError(f"{source}: no answer to {len(missing)} of the {len(prompts)} held-out prompts: {first!r}")
    return [answers[json.dumps(p)] for p in prompts]
