"""Loading the three TRL formats from every source kind, validation errors, drops and truncation."""

from __future__ import annotations

import json

import datasets
import pytest

from dpo_ray.data.dataset import load_pairs, split_eval
from dpo_ray.data.errors import DataError
from dpo_ray.data.tokenize import PROMPT_CUT, TokenizeSettings, truncate

ALWAYS = TokenizeSettings(chat_template="always")
ROWS = [("Write 41 in words.", "forty-one", "fourty-one"), ("Write 19 in words.", "nineteen", "ninteen")]


def standard(rows=ROWS):
    return [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in rows]


def conversational(rows=ROWS):
    return [
        {
            "prompt": [{"role": "user", "content": p}],
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
        }
        for p, c, r in rows
    ]


def implicit(rows=ROWS):
    return [
        {
            "chosen": [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
            "rejected": [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
        }
        for p, c, r in rows
    ]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_three_formats_give_the_same_pairs(tokenizer, tmp_path):
    a, _ = load_pairs([write_jsonl(tmp_path / "s.jsonl", standard())], tokenizer, ALWAYS)
    b, _ = load_pairs([write_jsonl(tmp_path / "c.jsonl", conversational())], tokenizer, TokenizeSettings())
    c, _ = load_pairs([write_jsonl(tmp_path / "i.jsonl", implicit())], tokenizer, TokenizeSettings())
    assert a == b == c
    expected_prompt = tokenizer("<|user|>Write 41 in words.<|end|><|assistant|>", add_special_tokens=False)["input_ids"]
    assert list(a[0].prompt_ids) == expected_prompt
    assert tokenizer.decode(a[0].chosen_ids) == "forty-one<|end|>"
    assert tokenizer.decode(a[0].rejected_ids) == "fourty-one<|end|>"


def test_standard_text_without_template_appends_eos_and_splits_implicit_prompt_at_a_word(tokenizer, tmp_path):
    rows = [{"prompt": "Write 41 in words:", "chosen": " forty-one", "rejected": " fourty-one"}]
    explicit, _ = load_pairs(
        [write_jsonl(tmp_path / "s.jsonl", rows)], tokenizer, TokenizeSettings(chat_template="never")
    )
    implied = [{"chosen": "Write 41 in words: forty-one", "rejected": "Write 41 in words: fourty-one"}]
    split, _ = load_pairs(
        [write_jsonl(tmp_path / "i.jsonl", implied)], tokenizer, TokenizeSettings(chat_template="never")
    )
    assert explicit == split
    assert tokenizer.decode(explicit[0].chosen_ids) == " forty-one<|end|>"


def test_every_source_kind_loads_the_same(tokenizer, tmp_path):
    rows = conversational()
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    loaded = [
        load_pairs([src], tokenizer, TokenizeSettings())[0]
        for src in (
            write_jsonl(tmp_path / "rows.jsonl", rows),
            str(tmp_path / "rows.json"),
            str(tmp_path / "rows.parquet"),
            str(tmp_path / "saved"),
            ds,
        )
    ]
    assert all(x == loaded[0] for x in loaded)


@pytest.mark.parametrize(
    "row, field, reason",
    [
        ({"prompt": "p", "rejected": "r"}, "chosen", "missing"),
        ({"prompt": "p", "chosen": "c", "rejected": 3}, "rejected", "must be a string or a list of messages"),
        ({"prompt": "p", "chosen": "  ", "rejected": "r"}, "chosen", "empty response"),
        (
            {
                "prompt": [{"role": "user", "content": "p"}],
                "chosen": [{"role": "robot", "content": "c"}],
                "rejected": [{"role": "assistant", "content": "r"}],
            },
            "chosen[0].role",
            "must be one of",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "p"}],
                "chosen": [{"role": "assistant", "content": 5}],
                "rejected": [{"role": "assistant", "content": "r"}],
            },
            "chosen[0].content",
            "must be a string",
        ),
        (
            {"prompt": "p", "chosen": [{"role": "assistant", "content": "c"}], "rejected": "r"},
            "rejected",
            "both be strings",
        ),
        (["not", "an", "object"], "<row>", "a row must be an object"),
    ],
)
def test_malformed_rows_name_file_row_and_field(tokenizer, tmp_path, row, field, reason):
    path = write_jsonl(tmp_path / "bad.jsonl", standard() + [row])
    with pytest.raises(DataError) as info:
        load_pairs([path], tokenizer, ALWAYS)
    assert (info.value.source, info.value.row, info.value.field) == (path, 2, field)
    assert reason in str(info.value) and f"{path}: row 2: field '{field}'" in str(info.value)


def test_broken_json_line_names_its_row(tokenizer, tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(standard()[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"broken.jsonl: row 1: field '<json>': not valid JSON"):
        load_pairs([str(path)], tokenizer, ALWAYS)


def test_skip_mode_drops_and_counts_by_reason(tokenizer, tmp_path):
    rows = standard() + [
        {"prompt": "p", "rejected": "r"},
        {"prompt": "p", "chosen": "", "rejected": "r"},
        {"prompt": "p", "chosen": "same", "rejected": "same"},
    ]
    pairs, report = load_pairs([write_jsonl(tmp_path / "mixed.jsonl", rows)], tokenizer, ALWAYS, on_error="skip")
    assert len(pairs) == 2 and report.rows == 5 and report.pairs == 2
    assert report.dropped == {"chosen: missing": 1, "chosen: empty response": 1, "chosen == rejected": 1}
    assert "1 chosen == rejected" in report.summary()


def test_identical_pairs_are_dropped_even_when_raising(tokenizer, tmp_path):
    rows = standard() + [{"prompt": "p", "chosen": "same", "rejected": "same"}]
    pairs, report = load_pairs([write_jsonl(tmp_path / "d.jsonl", rows)], tokenizer, ALWAYS)
    assert len(pairs) == 2 and report.dropped == {"chosen == rejected": 1}


def test_truncation_follows_trl(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", standard())
    (full, *_), _ = load_pairs([path], tokenizer, ALWAYS)
    n_prompt = len(full.prompt_ids)
    longest = max(len(full.chosen_ids), len(full.rejected_ids))
    (start, *_), _ = load_pairs([path], tokenizer, TokenizeSettings("always", max_length=n_prompt + longest))
    assert (start.prompt_ids, start.chosen_ids) == (full.prompt_ids, full.chosen_ids)
    (end, *_), _ = load_pairs(
        [path], tokenizer, TokenizeSettings("always", max_length=len(full.rejected_ids) + 3, truncation_mode="keep_end")
    )
    assert end.prompt_ids == full.prompt_ids[-3:] and end.rejected_ids == full.rejected_ids
    (short, *_), _ = load_pairs([path], tokenizer, TokenizeSettings("always", max_prompt_length=4))
    assert short.prompt_ids == full.prompt_ids[-4:]
    (filled, *_), report = load_pairs([path], tokenizer, TokenizeSettings("always", max_length=n_prompt))
    kept = max(n_prompt - longest, n_prompt // 2)  # a prompt that filled max_length was dropped (issue 39)
    assert filled.prompt_ids == full.prompt_ids[-kept:] and filled.chosen_ids == full.chosen_ids[: n_prompt - kept]
    assert report.warnings == {PROMPT_CUT: len(ROWS)} and not report.dropped


def test_a_prompt_gives_up_its_oldest_tokens_before_its_responses_room():
    """Hand arithmetic: under keep_start a prompt keeps at most max(max_length - longer response, max_length // 2)
    tokens, its last ones; max_prompt_length caps it too; keep_end keeps what the longer response leaves."""
    prompt, chosen, rejected = list(range(10)), list(range(100, 106)), list(range(200, 204))

    def cut(**settings):
        return truncate(prompt, chosen, rejected, TokenizeSettings(**settings))

    assert cut(max_length=16) == (prompt, chosen, rejected)  # it fits: as TRL
    assert cut(max_length=12) == (prompt[-6:], chosen, rejected)  # TRL: the prompt whole, responses 2 tokens
    assert cut(max_length=8) == (prompt[-4:], chosen[:4], rejected)  # half of max_length stays the prompt's
    assert cut(max_length=12, max_prompt_length=3) == (prompt[-3:], chosen, rejected)
    assert cut(max_prompt_length=3) == (prompt[-3:], chosen, rejected)
    assert cut(max_length=8, truncation_mode="keep_end") == (prompt[-2:], chosen, rejected)
    assert cut(max_length=4, truncation_mode="keep_end") == ([], chosen[-4:], rejected)


def test_missing_chat_template_is_a_clear_error_even_when_bad_rows_are_skipped(tokenizer, tmp_path):
    bare = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|end|>", pad_token="<pad>")
    path = write_jsonl(tmp_path / "c.jsonl", conversational())
    for on_error in ("raise", "skip"):  # a data/model mismatch, not a bad row: skipping would drop every row
        with pytest.raises(DataError, match=r"c\.jsonl: row 0: field 'prompt': messages need a chat template"):
            load_pairs([path], bare, TokenizeSettings(), on_error=on_error)


def test_eval_split_is_seeded_and_disjoint(tokenizer, tmp_path):
    rows = standard([(f"Write {n} in words.", f"a{n}", f"b{n}") for n in range(20)])
    pairs, _ = load_pairs([write_jsonl(tmp_path / "many.jsonl", rows)], tokenizer, ALWAYS)
    train, held = split_eval(pairs, 0.25, seed=3)
    assert len(held) == 5 and len(train) == 15 and set(train).isdisjoint(held)
    assert split_eval(pairs, 0.25, seed=3) == (train, held)


def test_prompt_that_merges_into_the_response_is_reported_and_cut_where_tokens_diverge(tokenizer, tmp_path):
    prompt, chosen, rejected = "ninet", "een", "y"
    whole = tokenizer(prompt + chosen + "<|end|>")["input_ids"]
    assert (
        tokenizer(prompt)["input_ids"] != whole[: len(tokenizer(prompt)["input_ids"])]
    )  # the BPE merge this test needs
    rows = [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]
    (pair,), report = load_pairs(
        [write_jsonl(tmp_path / "m.jsonl", rows)], tokenizer, TokenizeSettings(chat_template="never")
    )
    assert report.warnings == {"prompt is not a token prefix of prompt+response": 1}
    assert list(pair.prompt_ids + pair.chosen_ids) == whole
    assert tokenizer.decode(pair.prompt_ids + pair.rejected_ids) == "ninety<|end|>"


def test_the_common_prefix_is_the_one_a_token_by_token_walk_finds():
    """The halving search against the plain walk on random token lists, prefixes of each other or not."""
    import random

    from dpo_ray.data.tokenize import _common_prefix

    def walk(a, b):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    rng = random.Random(0)
    for _ in range(5000):
        a = [rng.randint(0, 3) for _ in range(rng.randint(0, 12))]
        b = a[: rng.randint(0, len(a))] + [rng.randint(0, 3) for _ in range(rng.randint(0, 5))]
        assert _common_prefix(a, b) == _common_prefix(b, a) == walk(a, b)


def test_a_row_the_tokenizer_fails_on_is_named_and_its_batch_still_tokenised(tokenizer, tmp_path):
    """Rows go to the tokenizer a batch at a time; when it fails on the batch, each row is tried alone, the one it
    fails on is that row's error (skipped and counted with data.on_error=skip), and the others' pairs are as usual."""

    class Failing:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, texts, **kwargs):
            if any("BOOM" in t for t in ([texts] if isinstance(texts, str) else texts)):
                raise ValueError("cannot take BOOM")
            return self.inner(texts, **kwargs)

    items = standard() + [{"prompt": "Write BOOM in words.", "chosen": "a", "rejected": "b"}] + standard()
    path = write_jsonl(tmp_path / "b.jsonl", items)
    expected, _ = load_pairs([write_jsonl(tmp_path / "ok.jsonl", standard() * 2)], tokenizer, ALWAYS)
    pairs, report = load_pairs([path], Failing(tokenizer), ALWAYS, on_error="skip")
    assert pairs == expected and report.dropped == {"<row>: cannot be tokenised (ValueError: cannot take BOOM)": 1}
    with pytest.raises(DataError, match=r"row 2: field '<row>': cannot be tokenised"):
        load_pairs([path], Failing(tokenizer), ALWAYS)
