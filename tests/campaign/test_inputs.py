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


def test_dropped_rows_are_a_warning_with_the_share_and_what_keeps_them(run_config, tiny_model_dir, tmp_path, caplog):
    """A quarter of the rows dropped for length was an INFO line; a malformed row stopped the load without naming
    data.on_error=skip (issue 40)."""
    import pytest

    from dpo_ray.data.errors import DataError

    rows = [{"prompt": f"Write {n} in words.", "chosen": f"c{n}", "rejected": f"r{n}"} for n in range(30)]
    rows += [{"prompt": "Write " + "nine " * 200, "chosen": "c", "rejected": "r"} for _ in range(10)]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_config.model.path, run_config.data.train_files = tiny_model_dir, [str(path)]
    run_config.data.max_length = 64
    caplog.set_level("INFO", logger="dpo_ray.campaign.inputs")
    offline_inputs(run_config)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "train data: 10 of 40 rows (25%) dropped: 10 prompt fills max_length (keep them: a larger data.max_length, "
        "or data.max_prompt_length or data.truncation_mode=keep_end to cut their prompts)"
    ]
    path.write_text(path.read_text() + json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    with pytest.raises(DataError, match=r"row 40: field 'rejected': missing \(data.on_error=skip drops such rows"):
        offline_inputs(run_config)
