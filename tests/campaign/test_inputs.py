"""What a run trains on: the held-out split is said, with its counts and where it came from."""

from __future__ import annotations

import json

from dpo_ray.campaign.inputs import offline_inputs


def test_the_held_out_split_names_its_counts_and_file(run_config, tiny_model_dir, tmp_path, caplog):
    rows = [{"prompt": f"Write {n} in words.", "chosen": f"c{n}", "rejected": f"r{n}"} for n in range(40)]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_config.model.path, run_config.data.train_files = tiny_model_dir, [str(path)]
    caplog.set_level("INFO", logger="dpo_ray.campaign.inputs")
    inputs = offline_inputs(run_config)
    assert (len(inputs.train), len(inputs.eval)) == (36, 4)
    note = f"36 train pairs and 4 held out of {path} (data.eval_fraction=0.1, seed 0)"
    assert inputs.data_note == note and f"data: {note}" in caplog.text


def test_dropped_rows_are_a_warning_with_the_share_and_long_prompts_are_cut_not_dropped(
    run_config, tiny_model_dir, tmp_path, caplog
):
    """A quarter of the rows dropped for length was an INFO line; a malformed row stopped the load without naming
    data.on_error=skip (issue 40). Rows whose prompt fills data.max_length were dropped (issue 39): now their prompt
    keeps its last tokens and their responses stay whole."""
    import pytest

    from dpo_ray.data.errors import DataError
    from dpo_ray.workers.models import load_tokenizer

    rows = [{"prompt": f"Write {n} in words.", "chosen": f"c{n}", "rejected": f"r{n}"} for n in range(26)]
    rows += [{"prompt": "p", "chosen": "same", "rejected": "same"} for _ in range(4)]
    long_prompt = "Write " + " ".join(f"w{n}" for n in range(200)) + " in words."
    rows += [{"prompt": long_prompt, "chosen": f"long c{n}", "rejected": f"long r{n}"} for n in range(10)]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_config.model.path, run_config.data.train_files = tiny_model_dir, [str(path)]
    run_config.data.max_length = 64
    caplog.set_level("INFO", logger="dpo_ray.campaign.inputs")
    inputs = offline_inputs(run_config)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["train data: 4 of 40 rows (10%) dropped: 4 chosen == rejected (they state no preference)"]
    assert "10 prompts cut to their last tokens" in caplog.text
    tokenizer = load_tokenizer(tiny_model_dir)
    full_prompt = tokenizer(long_prompt)["input_ids"]
    cut = [p for p in [*inputs.train, *inputs.eval] if len(p.prompt_ids) + len(p.chosen_ids) >= 32]
    assert len(cut) == 10 and len(full_prompt) > 64
    for pair in cut:  # the prompt's end, responses whole: max(64 - longer response, 32) prompt tokens
        n = len(pair.prompt_ids)
        assert n == max(64 - max(len(pair.chosen_ids), len(pair.rejected_ids)), 32)
        assert list(pair.prompt_ids) == full_prompt[-n:]
        assert tokenizer.decode(pair.chosen_ids).startswith("long c")
        assert pair.chosen_ids[-1] == tokenizer.eos_token_id
    path.write_text(path.read_text() + json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    with pytest.raises(DataError, match=r"row 40: field 'rejected': missing \(data.on_error=skip drops such rows"):
        offline_inputs(run_config)
