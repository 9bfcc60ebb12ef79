"""Preference rows -> token ids: chat template, prefix check, TRL-style truncation, de-duplication."""

from __future__ import annotations

import logging
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from ..schema import DataConfig
from .errors import DataError, ErrorPolicy
from .formats import PreferenceRow, Text

log = logging.getLogger(__name__)
NOT_A_PREFIX = "prompt is not a token prefix of prompt+response"
PROMPT_CUT = "prompts cut to their last tokens (data.max_length, data.max_prompt_length)"


class TokenizedPair:
    """A pair's token ids (prompt, chosen, rejected) in one int32 array: 4 bytes a token, where tuples of Python ints
    took ~36 (a driver holding 60k realistic pairs needed 3-4 GiB). The ids read back as tuples; immutable."""

    __slots__ = ("_ids", "_prompt_end", "_chosen_end", "label")

    def __init__(
        self,
        prompt_ids: Iterable[int],
        chosen_ids: Iterable[int],
        rejected_ids: Iterable[int],
        label: bool | None = None,  # KTO: the completion's label; then chosen_ids is the completion and rejected_ids
        # another example's completion, the mismatched pair whose log-ratio estimates KTO's reference point
    ):
        ids = array("i", prompt_ids)
        prompt_end = len(ids)
        ids.extend(chosen_ids)
        chosen_end = len(ids)
        ids.extend(rejected_ids)
        self._hold(ids, prompt_end, chosen_end, label)

    def _hold(self, ids: array, prompt_end: int, chosen_end: int, label: bool | None) -> None:
        for name, value in zip(self.__slots__, (ids, prompt_end, chosen_end, label), strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"TokenizedPair is immutable: cannot set {name}")

    @property
    def prompt_ids(self) -> tuple[int, ...]:
        return tuple(self._ids[: self._prompt_end])

    @property
    def chosen_ids(self) -> tuple[int, ...]:
        return tuple(self._ids[self._prompt_end : self._chosen_end])

    @property
    def rejected_ids(self) -> tuple[int, ...]:
        return tuple(self._ids[self._chosen_end :])

    @property
    def ids(self) -> array:
        """prompt, chosen and rejected ids end to end (int32; cuts says where each ends): read, never change."""
        return self._ids

    @property
    def cuts(self) -> tuple[int, int]:
        """Where the prompt and the chosen ids end in ids."""
        return self._prompt_end, self._chosen_end

    @property
    def prompt_len(self) -> int:
        return self._prompt_end

    @property
    def chosen_len(self) -> int:
        return self._chosen_end - self._prompt_end

    @property
    def rejected_len(self) -> int:
        return len(self._ids) - self._chosen_end

    @property
    def tokens(self) -> int:
        """Tokens one padded-free chosen + rejected forward processes."""
        return len(self._ids) + self._prompt_end

    def _key(self) -> tuple:
        return self._ids.tobytes(), self._prompt_end, self._chosen_end, self.label

    def __eq__(self, other) -> bool:
        return isinstance(other, TokenizedPair) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self):
        return pair_from_bytes, self._key()

    def __repr__(self) -> str:
        return (
            f"TokenizedPair(prompt_ids={self.prompt_ids}, chosen_ids={self.chosen_ids}, "
            f"rejected_ids={self.rejected_ids}, label={self.label})"
        )


def pair_from_bytes(ids: bytes, prompt_end: int, chosen_end: int, label: bool | None) -> TokenizedPair:
    """A pair from its int32 ids' bytes (unpickling, the pairs cache): a worker process's pairs reach the driver at 4
    bytes a token."""
    pair, values = TokenizedPair.__new__(TokenizedPair), array("i")
    values.frombytes(ids)
    pair._hold(values, prompt_end, chosen_end, label)
    return pair


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


def prompt_text(tokenizer, prompt: Text, templated: bool) -> str:
    """The text a model is given to answer prompt: the chat template's rendering up to the assistant's turn."""
    if templated:
        return tokenizer.apply_chat_template(_messages(prompt, "user"), add_generation_prompt=True, tokenize=False)
    return prompt


def turn_text(tokenizer, prompt: Text, response: Text, templated: bool) -> str:
    """The text of prompt+response the way the model sees it at inference (an EOS after a plain response)."""
    if templated:
        return tokenizer.apply_chat_template(
            _messages(prompt, "user") + _messages(response, "assistant"), tokenize=False
        )
    eos = tokenizer.eos_token or ""
    return prompt + (response if response.endswith(eos) else response + eos)


def encode_prompt(tokenizer, prompt: Text, templated: bool) -> list[int]:
    """Token ids a model is given to answer prompt: the same rendering training uses (for generation); a template
    holds any BOS it wants, a plain prompt gets the tokenizer's own special tokens."""
    return tokenizer(prompt_text(tokenizer, prompt, templated), add_special_tokens=not templated)["input_ids"]


def encode_turn(tokenizer, prompt: Text, response: Text, templated: bool) -> tuple[list[int], list[int]]:
    """Token ids of a prompt and of prompt+response, rendered the way the model sees them at inference."""
    full = tokenizer(turn_text(tokenizer, prompt, response, templated), add_special_tokens=not templated)
    return encode_prompt(tokenizer, prompt, templated), full["input_ids"]


def prompt_budget(longest: int, s: TokenizeSettings) -> int | None:
    """The most prompt tokens a pair keeps (None: no limit): max_prompt_length, and under keep_start never more than
    leaves the longer response whole or half of max_length, so a long prompt gives up its oldest tokens rather than
    its responses' room (TRL 1.16 keeps it whole, cutting the responses, and drops a row it fills)."""
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


BATCH_ROWS = 256  # rows whose texts go to the tokenizer in one call (its per-call cost, paid once a batch)


@dataclass
class _Rendered:
    row: PreferenceRow
    texts: tuple[str, str, str]  # prompt, prompt+chosen, prompt+rejected
    special: bool  # the tokenizer adds its special tokens (plain rows; a template holds its own)


def tokenize_rows(
    rows: Iterable[PreferenceRow], tokenizer, settings: TokenizeSettings, policy: ErrorPolicy
) -> list[TokenizedPair]:
    """Tokenise every row, BATCH_ROWS at a time in one tokenizer call per text; malformed rows go through the error
    policy, identical pairs are dropped and counted."""
    pairs, report, batch = [], policy.report, []
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
            texts = tuple(
                [prompt_text(tokenizer, row.prompt, templated)]
                + [turn_text(tokenizer, row.prompt, response, templated) for response in (row.chosen, row.rejected)]
            )
        except Exception as error:  # a template's own failure on this row: the row's error
            policy.handle(
                DataError(row.source, row.row, "<row>", f"cannot be tokenised ({type(error).__name__}: {error})")
            )
            continue
        batch.append(_Rendered(row, texts, not templated))
        if len(batch) == BATCH_ROWS:
            pairs += _pairs_of(batch, tokenizer, settings, policy)
            batch = []
    pairs += _pairs_of(batch, tokenizer, settings, policy)
    report.pairs += len(pairs)
    return pairs


def _token_ids(tokenizer, batch: list[_Rendered]) -> list[tuple[list[int], ...]]:
    """Each row's three texts' token ids, one tokenizer call per text and special-token setting."""
    ids: list = [None] * len(batch)
    for special in (True, False):
        members = [i for i, rendered in enumerate(batch) if rendered.special == special]
        if not members:
            continue
        columns = [
            tokenizer([batch[i].texts[k] for i in members], add_special_tokens=special)["input_ids"] for k in range(3)
        ]
        for position, i in enumerate(members):
            ids[i] = tuple(column[position] for column in columns)
    return ids


def _pairs_of(
    batch: list[_Rendered], tokenizer, settings: TokenizeSettings, policy: ErrorPolicy
) -> list[TokenizedPair]:
    """A batch's pairs: its rows tokenised together (one at a time when the tokenizer fails on the batch, to name
    the row it fails on), each prompt cut where its tokens part from the responses', then truncated."""
    try:
        token_ids = _token_ids(tokenizer, batch)
    except Exception:
        token_ids = []
        for rendered in batch:
            try:
                token_ids += _token_ids(tokenizer, [rendered])
            except Exception as error:  # a tokenizer's own failure on this row (a lone surrogate): the row's error
                row, reason = rendered.row, f"cannot be tokenised ({type(error).__name__}: {error})"
                policy.handle(DataError(row.source, row.row, "<row>", reason))
                token_ids.append(None)
    pairs, report = [], policy.report
    for rendered, ids in zip(batch, token_ids, strict=True):
        if ids is None:
            continue
        row, (prompt_ids, full_chosen, full_rejected) = rendered.row, ids
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
        empty = next((name for name, ids in (("chosen", chosen), ("rejected", rejected)) if not ids), None)
        if empty:
            policy.handle(DataError(row.source, row.row, empty, "empty response after tokenisation"))
            continue
        cut_prompt, chosen, rejected = truncate(prompt, chosen, rejected, settings)
        if len(cut_prompt) < len(prompt):
            report.warnings[PROMPT_CUT] += 1
        if chosen == rejected and row.label is None:
            report.drop("chosen == rejected")
            continue
        pairs.append(TokenizedPair(cut_prompt, chosen, rejected, row.label))  # into int32 ids, no tuples between
    return pairs
