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
