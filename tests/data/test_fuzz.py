"""Fuzzing the preference loader with corrupted rows: each one raises the clear error (file, row, field) or is
skipped and counted; nothing escapes as a raw traceback; every valid row still becomes a pair."""

from __future__ import annotations

import json
import random

import pytest

from dpo_ray.data.dataset import load_pairs
from dpo_ray.data.errors import DataError
from dpo_ray.data.prompts import load_prompts
from dpo_ray.data.tokenize import TokenizeSettings

SETTINGS = TokenizeSettings(max_length=64)


def valid_row(rng: random.Random) -> dict:
    n = rng.randrange(1000)
    if rng.random() < 0.5:
        return {"prompt": f"Write {n} in words.", "chosen": f"number {n}", "rejected": f"numbr {n + 1}"}
    return {
        "prompt": [{"role": "user", "content": f"Write {n} in words."}],
        "chosen": [{"role": "assistant", "content": f"number {n}"}],
        "rejected": [{"role": "assistant", "content": f"nmber {n}"}],
    }


def _without(row, field):
    return {k: v for k, v in row.items() if k != field}


def _set_message(row, field, key, value):
    if isinstance(row[field], list):
        row[field][0][key] = value
    else:
        row[field] = value
    return row


# Each corruption turns a valid row into a row that must be refused (a DataError), as text for a .jsonl line.
CORRUPTIONS = {
    "missing field": lambda row, rng: json.dumps(_without(row, rng.choice(["chosen", "rejected"]))),
    "null field": lambda row, rng: json.dumps({**row, rng.choice(["chosen", "rejected"]): None}),
    "wrong type": lambda row, rng: json.dumps(
        {**row, rng.choice(["prompt", "chosen", "rejected"]): rng.choice([7, 3.5, True, {"a": 1}])}
    ),
    "empty response": lambda row, rng: json.dumps(
        _set_message(row, rng.choice(["chosen", "rejected"]), "content", " ")
    ),
    "wrong role": lambda row, rng: json.dumps(
        _set_message(row, "chosen", "role", "robot")
        if isinstance(row["chosen"], list)
        else {**row, "chosen": [{"role": "robot", "content": "x"}]}
    ),
    "content not a string": lambda row, rng: json.dumps({**row, "rejected": [{"role": "assistant", "content": ["x"]}]}),
    "message not an object": lambda row, rng: json.dumps({**row, "chosen": ["just text"]}),
    "mixed formats": lambda row, rng: json.dumps(
        {**row, "chosen": "text", "rejected": [{"role": "assistant", "content": "x"}]}
    ),
    "row not an object": lambda row, rng: json.dumps(rng.choice([[1, 2], "a string", 42, None])),
    "invalid JSON": lambda row, rng: json.dumps(row)[: rng.randrange(1, 20)],
    "invalid UTF-8": lambda row, rng: b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}',
}


def corrupted_file(tmp_path, seed: int, n: int = 300):
    """A .jsonl of n rows, about a third corrupted; returns the file and the count of valid rows."""
    rng = random.Random(seed)
    lines, valid = [], 0
    for _ in range(n):
        row = valid_row(rng)
        if rng.random() < 0.35:
            line = CORRUPTIONS[rng.choice(sorted(CORRUPTIONS))](row, rng)
        else:
            if rng.random() < 0.05:  # huge but valid: truncated by max_length, never dropped
                row["chosen"] = row["chosen"] if isinstance(row["chosen"], list) else row["chosen"] + " x" * 50_000
            line, valid = json.dumps(row), valid + 1
        lines.append(line if isinstance(line, bytes) else line.encode())
    path = tmp_path / f"fuzz-{seed}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, valid


@pytest.mark.parametrize("seed", range(5))
def test_corrupted_rows_are_skipped_and_counted_and_valid_rows_kept(tmp_path, tokenizer, seed):
    path, valid = corrupted_file(tmp_path, seed)
    pairs, report = load_pairs([str(path)], tokenizer, SETTINGS, on_error="skip")
    assert len(pairs) == valid and report.rows == 300
    assert sum(report.dropped.values()) == 300 - valid


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_each_corruption_raises_the_error_naming_file_row_and_field(tmp_path, tokenizer, kind):
    rng = random.Random(kind)
    bad = CORRUPTIONS[kind](valid_row(rng), rng)
    path = tmp_path / "one.jsonl"
    path.write_bytes(
        json.dumps(valid_row(rng)).encode() + b"\n" + (bad if isinstance(bad, bytes) else bad.encode()) + b"\n"
    )
    with pytest.raises(DataError, match=r"one\.jsonl: row 1: field '[^']+': .+"):
        load_pairs([str(path)], tokenizer, SETTINGS)


def test_prompt_files_survive_the_same_corruptions(tmp_path):
    path, _ = corrupted_file(tmp_path, seed=9)
    prompts = load_prompts([str(path)], on_error="skip")
    assert prompts and all(isinstance(p, (str, list)) for p in prompts)
