"""Preference rows -> token ids: chat template, prefix check, TRL-style truncation, de-duplication."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from ..schema import DataConfig
from .errors import DataError, ErrorPolicy
from .formats import PreferenceRow, Text

log = logging.getLogger(__name__)
NOT_A_PREFIX = "prompt is not a token prefix of prompt+response"
PROMPT_CUT = "prompts cut to their last tokens (data.max_length, data.max_prompt_length)"


@dataclass(frozen=True)
class TokenizedPair:
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    # KTO: the completion's label (desirable or not); then chosen_ids is the completion and rejected_ids another
    # example's completion, the mismatched pair whose log-ratio estimates KTO's reference point
    label: bool | None = None

    @property
    def tokens(self) -> int:
        """Tokens one padded-free chosen + rejected forward processes."""
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


@dataclass(frozen=True)
class TokenizeSettings:
    chat_template: str = "auto"
    max_length: int | None = None
    max_prompt_length: int | None = None
    truncation_mode: str = "keep_start"

    @classmethod
    def of(cls, data: DataConfig) -> TokenizeSettings:
        """The data section's tokenisation options (validated when the config was composed)."""
        mode = str(data.chat_template)
        return cls(mode, data.max_length, data.max_prompt_length, str(data.truncation_mode))


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens a and b share: slices compared in C, halving the gap when they differ (a Python loop
    over every prompt token was a third of tokenising)."""
    a, b = list(a), list(b)
    same, differs = 0, min(len(a), len(b))
    if a[:differs] == b[:differs]:
        return differs
    while differs - same > 1:  # a[:same] == b[:same] and a[:differs] != b[:differs]
        middle = (same + differs) // 2
        if a[:middle] == b[:middle]:
            same = middle
        else:
            differs = middle
    return same


def _messages(text: Text, role: str) -> list:
    return text if isinstance(text, list) else [{"role": role, "content": text}]


def encode_prompt(tokenizer, prompt: Text, templated: bool) -> list[int]:
    """Token ids a model is given to answer prompt: the same rendering training uses (for generation)."""
    if templated:
        text = tokenizer.apply_chat_template(_messages(prompt, "user"), add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template already holds any BOS it wants
    return tokenizer(prompt)["input_ids"]


def encode_turn(tokenizer, prompt: Text, response: Text, templated: bool) -> tuple[list[int], list[int]]:
    """Token ids of a prompt and of prompt+response, rendered the way the model sees them at inference."""
    if templated:
        full_text = tokenizer.apply_chat_template(
            _messages(prompt, "user") + _messages(response, "assistant"), tokenize=False
        )
        return encode_prompt(tokenizer, prompt, True), tokenizer(full_text, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token or ""
    text = response if response.endswith(eos) else response + eos
    return encode_prompt(tokenizer, prompt, False), tokenizer(prompt + text)["input_ids"]


def prompt_budget(longest: int, s: TokenizeSettings) -> int | None:
    """The most prompt tokens a pair keeps (None: no limit): max_prompt_length, and under keep_start never more than
    leaves the longer response whole or half of max_length, so a long prompt gives up its oldest tokens rather than
    its responses' room (TRL keeps it and trains such a pair on nothing)."""
    caps = [] if s.max_prompt_length is None else [s.max_prompt_length]
    if s.max_length is not None and s.truncation_mode == "keep_start":
        caps.append(max(s.max_length - longest, s.max_length // 2))
    return min(caps, default=None)


def truncate(prompt: list[int], chosen: list[int], rejected: list[int], s: TokenizeSettings):
    """A tokenised pair within max_length: the prompt keeps its last prompt_budget tokens (the end, beside the
    answer, holds the question and the template's assistant header); keep_start keeps the responses' starts (TRL),
    keep_end the responses' ends and as much of the prompt as the longer one leaves room for."""
    budget = prompt_budget(max(len(chosen), len(rejected)), s)
    if budget is not None and len(prompt) > budget:
        prompt = prompt[len(prompt) - budget :]
    if s.max_length is None:
        return prompt, chosen, rejected
    if s.truncation_mode == "keep_start":
        room = s.max_length - len(prompt)
        return prompt, chosen[:room], rejected[:room]
    keep = max(s.max_length - max(len(chosen), len(rejected)), 0)
    prompt = prompt[len(prompt) - keep :] if keep < len(prompt) else prompt
    return prompt, chosen[-s.max_length :], rejected[-s.max_length :]


CHARS_PER_TOKEN = 64  # a row's text over this many characters a token of max_length is cut before tokenising


def _chars(text: Text | None) -> int:
    if text is None:
        return 0
    return len(text) if isinstance(text, str) else sum(len(m["content"]) for m in text)


def _cut(text: Text, limit: int, keep_end: bool) -> Text:
    """Each string (or message content) at most limit characters: its first ones, or its last with keep_end."""
    if isinstance(text, list):
        return [{**m, "content": _cut(m["content"], limit, keep_end)} for m in text]
    if len(text) <= limit:
        return text
    return text[-limit:] if keep_end else text[:limit]


def bounded(row: PreferenceRow, settings: TokenizeSettings) -> tuple[PreferenceRow, str]:
    """The row with texts over CHARS_PER_TOKEN characters a token of max_length cut before tokenising (a 50 MB row
    would take minutes and gigabytes to tokenise, only to be cut to max_length): a prompt keeps its end, as truncate
    keeps it; responses keep the end truncation keeps. The second value says what was done ('' when nothing)."""
    if settings.max_length is None:
        return row, ""
    limit, keep_end = CHARS_PER_TOKEN * settings.max_length, settings.truncation_mode == "keep_end"
    long = [name for name in ("prompt", "chosen", "rejected") if _chars(getattr(row, name)) > limit]
    if not long:
        return row, ""
    cut = {name: _cut(getattr(row, name), limit, keep_end or name == "prompt") for name in long}
    return replace(row, **cut), f"{'/'.join(long)} over {limit} characters, cut before tokenising"


def tokenize_rows(
    rows: Iterable[PreferenceRow], tokenizer, settings: TokenizeSettings, policy: ErrorPolicy
) -> list[TokenizedPair]:
    """Tokenise every row; malformed rows go through the error policy, identical pairs are dropped and counted."""
    pairs, report = [], policy.report
    template_ok = getattr(tokenizer, "chat_template", None) is not None
    for row in rows:
        templated = row.conversational or settings.chat_template == "always"
        # A data/model mismatch, not a bad row: it fails the run even with data.on_error=skip, at its first row.
        if settings.chat_template == "never" and row.conversational:
            raise DataError(
                row.source, row.row, "chosen", "message lists need a chat template: data.chat_template=never"
            )
        if templated and not template_ok:
            raise DataError(
                row.source,
                row.row,
                "prompt",
                f"{'messages' if row.conversational else 'data.chat_template=always'} need a chat template, and the "
                f"tokenizer of {getattr(tokenizer, 'name_or_path', 'the model')} has none",
            )
        if row.chosen == row.rejected and row.label is None:
            report.drop("chosen == rejected")
            continue
        row, bounded_how = bounded(row, settings)
        if bounded_how:
            report.warnings[bounded_how] += 1
        try:
            prompt_ids, full_chosen = encode_turn(tokenizer, row.prompt, row.chosen, templated)
            _, full_rejected = encode_turn(tokenizer, row.prompt, row.rejected, templated)
        except Exception as error:  # a tokenizer or template's own failure on this row: the row's error
            reason = f"cannot be tokenised ({type(error).__name__}: {error})"
            policy.handle(DataError(row.source, row.row, "<row>", reason))
            continue
        prompt_len = min(_common_prefix(prompt_ids, full_chosen), _common_prefix(prompt_ids, full_rejected))
        if prompt_len < len(prompt_ids):
            # The template or a token merge renders the prompt differently alone; train on what the full sequence holds.
            if not report.warnings[NOT_A_PREFIX]:
                log.warning(
                    "%s: row %d: the tokenised prompt is not a prefix of prompt+response (template or merge at the "
                    "boundary); the response starts where they diverge: %r",
                    row.source,
                    row.row,
                    tokenizer.decode(prompt_ids[prompt_len:]),
                )
            report.warnings[NOT_A_PREFIX] += 1
        prompt = full_chosen[:prompt_len]
        chosen, rejected = full_chosen[prompt_len:], full_rejected[prompt_len:]
        for name, ids in (("chosen", chosen), ("rejected", rejected)):
            if not ids:
                policy.handle(DataError(row.source, row.row, name, "empty response after tokenisation"))
                break
        else:
            cut_prompt, chosen, rejected = truncate(prompt, chosen, rejected, settings)
            if len(cut_prompt) < len(prompt):
                report.warnings[PROMPT_CUT] += 1
            prompt = cut_prompt
            if chosen == rejected and row.label is None:
                report.drop("chosen == rejected")
                continue
            pairs.append(TokenizedPair(tuple(prompt), tuple(chosen), tuple(rejected), row.label))
    report.pairs += len(pairs)
    return pairs
