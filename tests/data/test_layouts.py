"""Every preference layout TRL's DPOTrainer accepts gives TRL's own token ids (TRL 1.16 preprocesses the same rows
here), and the layouts TRL chokes on load as their equivalent TRL layout does; unsupported columns are refused."""

from __future__ import annotations

import json

import datasets
import pytest

from dpo_ray.data.dataset import load_pairs
from dpo_ray.data.errors import DataError
from dpo_ray.data.tokenize import TokenizeSettings

ROWS = [("Write 41 in words.", "forty-one", "fourty-one"), ("Write 19 in words.", "nineteen", "ninteen")]
SYSTEM = "Answer with words only."
user = lambda text: {"role": "user", "content": text}
assistant = lambda text: {"role": "assistant", "content": text}
system = lambda text: {"role": "system", "content": text}

LAYOUTS = {
    "standard": [{"prompt": p, "chosen": " " + c, "rejected": " " + r} for p, c, r in ROWS],
    "conversational": [{"prompt": [user(p)], "chosen": [assistant(c)], "rejected": [assistant(r)]} for p, c, r in ROWS],
    "implicit string": [{"chosen": f"{p} {c}", "rejected": f"{p} {r}"} for p, c, r in ROWS],
    "implicit conversational": [
        {"chosen": [user(p), assistant(c)], "rejected": [user(p), assistant(r)]} for p, c, r in ROWS
    ],
    "system message": [
        {"prompt": [system(SYSTEM), user(p)], "chosen": [assistant(c)], "rejected": [assistant(r)]} for p, c, r in ROWS
    ],
    "multi-turn": [
        {
            "prompt": [user("Count to two."), assistant("one two"), user(p)],
            "chosen": [assistant(c)],
            "rejected": [assistant(r)],
        }
        for p, c, r in ROWS
    ],
    "extra columns": [
        {"prompt": [user(p)], "chosen": [assistant(c)], "rejected": [assistant(r)], "score_chosen": 9.0, "id": str(i)}
        for i, (p, c, r) in enumerate(ROWS)
    ],
}


def trl_ids(rows: list[dict], tokenizer, model_dir: str, tmp_path) -> list[tuple]:
    """(prompt, chosen, rejected) ids of each row as TRL's DPOTrainer preprocesses it."""
    trl = pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM

    args = trl.DPOConfig(
        output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False, max_length=None, save_strategy="no"
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = trl.DPOTrainer(
        model=model, args=args, processing_class=tokenizer, train_dataset=datasets.Dataset.from_list(rows)
    )
    data = trainer.train_dataset
    return [(tuple(r["prompt_ids"]), tuple(r["chosen_ids"]), tuple(r["rejected_ids"])) for r in data]


def our_ids(rows: list[dict], tokenizer, tmp_path, columns=None) -> list[tuple]:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, _ = load_pairs([str(path)], tokenizer, TokenizeSettings(max_length=None), columns=columns)
    return [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in pairs]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_trl_layout_gives_trls_token_ids(layout, tokenizer, tiny_model_dir, tmp_path):
    rows = LAYOUTS[layout]
    assert our_ids(rows, tokenizer, tmp_path) == trl_ids(rows, tokenizer, tiny_model_dir, tmp_path)


def ultrafeedback(rows=ROWS, prompt=lambda p: p):
    """UltraFeedback binarized's layout: a string prompt, and responses as whole conversations repeating it."""
    return [
        {"prompt": prompt(p), "chosen": [user(p), assistant(c)], "rejected": [user(p), assistant(r)], "score": 7.5}
        for p, c, r in rows
    ]


def test_the_ultrafeedback_layout_loads_as_its_conversations_do_in_trl(tokenizer, tiny_model_dir, tmp_path):
    expected = trl_ids(LAYOUTS["implicit conversational"], tokenizer, tiny_model_dir, tmp_path)
    assert our_ids(ultrafeedback(), tokenizer, tmp_path) == expected
    with pytest.raises(DataError, match=r"row 0: field 'prompt': the string prompt 'Write 42 in words\.' differs"):
        our_ids(ultrafeedback(prompt=lambda p: p.replace("41", "42")), tokenizer, tmp_path)


def test_a_system_column_and_mapped_columns_load_as_a_system_message_does_in_trl(tokenizer, tiny_model_dir, tmp_path):
    orca = [{"system": SYSTEM, "question": p, "chosen": c, "rejected": r} for p, c, r in ROWS]
    expected = trl_ids(LAYOUTS["system message"], tokenizer, tiny_model_dir, tmp_path)
    assert our_ids(orca, tokenizer, tmp_path, columns={"question": "prompt"}) == expected
    with pytest.raises(DataError, match=r"field 'prompt': missing; the row's columns: question, answer \(map them: "
                       r"data.columns=\{question:prompt\}\)"):  # fmt: skip
        our_ids([{"question": "q", "answer": "a", "chosen": "c", "rejected": "r"}], tokenizer, tmp_path)


def test_columns_are_mapped_in_the_files_that_have_them_and_others_load_as_they_are(tokenizer, tmp_path):
    """data.columns={good:chosen,bad:rejected} over two files, one already in TRL's names: it used to lose its own
    chosen column ("field 'chosen': missing")."""
    theirs, ours = tmp_path / "theirs.jsonl", tmp_path / "ours.jsonl"
    theirs.write_text("".join(json.dumps({"question": p, "good": c, "bad": r}) + "\n" for p, c, r in ROWS))
    ours.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in ROWS))
    columns = {"question": "prompt", "good": "chosen", "bad": "rejected"}
    pairs, _ = load_pairs([str(theirs), str(ours)], tokenizer, TokenizeSettings(max_length=None), columns=columns)
    ids = [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in pairs]
    assert len(ids) == 2 * len(ROWS) and ids[: len(ROWS)] == ids[len(ROWS) :]


@pytest.mark.parametrize(
    "row, field, reason",
    [
        (
            {"prompt": "p", "chosen": "c", "rejected": "r", "images": ["x.png"]},
            "images",
            "image rows are not supported",
        ),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "tools": [{"name": "f"}]}, "tools", "tool definitions"),
        (
            {"question": "p", "response_j": "c", "response_k": "r"},  # the stack-exchange-paired layout
            "chosen",
            "map them: data.columns={question:prompt,response_j:chosen,response_k:rejected}",
        ),
        (
            {"question": "q", "good": "c", "bad": "r"},
            "chosen",
            "data.columns={question:prompt,good:chosen,bad:rejected}",
        ),
        (
            {"instruction": "q", "preferred": "c", "dispreferred": "r"},
            "chosen",
            "{instruction:prompt,preferred:chosen,",
        ),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "system": 3}, "system", "must be a string"),
    ],
)
def test_unsupported_and_unmapped_columns_are_named(row, field, reason, tokenizer, tmp_path):
    with pytest.raises(DataError) as info:
        our_ids([row], tokenizer, tmp_path)
    assert info.value.field == field and reason in info.value.reason


def unpaired(rows=ROWS):
    """TRL's unpaired layout: each pair as a desirable and an undesirable labelled completion."""
    return [{"prompt": p, "completion": " " + c, "label": True} for p, c, _ in rows] + [
        {"prompt": p, "completion": " " + r, "label": False} for p, _, r in rows
    ]


def kto_ids(rows, tokenizer, tmp_path, columns=None):
    path = tmp_path / "kto.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, _ = load_pairs([str(path)], tokenizer, TokenizeSettings(max_length=None), columns=columns, unpaired=True)
    return pairs


def test_unpaired_rows_become_kto_examples_beside_the_previous_examples_completion(tokenizer, tmp_path):
    examples = kto_ids(unpaired(), tokenizer, tmp_path)
    assert [e.label for e in examples] == [True, True, False, False]
    completions = [e.chosen_ids for e in examples]
    assert [e.rejected_ids for e in examples] == completions[-1:] + completions[:-1]  # TRL's rotation by one
    paired = kto_ids(LAYOUTS["standard"], tokenizer, tmp_path)  # a paired set trains with KTO as TRL unpairs it
    assert paired == examples
    prompt = tokenizer(ROWS[0][0])["input_ids"]
    assert list(examples[0].prompt_ids) == prompt
    with pytest.raises(DataError, match="needs an unpaired loss: algo.loss_type=kto"):
        our_ids(unpaired(), tokenizer, tmp_path)


@pytest.mark.parametrize(
    "row, field, reason",
    [
        ({"prompt": "p", "completion": "c", "label": "yes"}, "label", "must be true or false, got 'yes'"),
        ({"prompt": "p", "label": True}, "completion", "missing"),
        ({"prompt": "p", "completion": " ", "label": False}, "completion", "empty completion"),
        ({"completion": "c", "label": True, "question": "q"}, "prompt", "map them: data.columns={question:prompt}"),
        ({"prompt": "p", "output": "c", "label": True}, "completion", "map them: data.columns={output:completion}"),
    ],
)
def test_bad_unpaired_rows_name_their_field(row, field, reason, tokenizer, tmp_path):
    with pytest.raises(DataError) as info:
        kto_ids([row], tokenizer, tmp_path)
    assert info.value.field == field and reason in info.value.reason
