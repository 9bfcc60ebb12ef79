"""The Python front door: README's "Use from Python" example runs as written, and in-memory rows load as files do."""

from __future__ import annotations

import math
import re
from pathlib import Path

import datasets
import pytest
import yaml

import dpo_ray
from dpo_ray.data.dataset import load_pairs
from dpo_ray.data.errors import DataError
from dpo_ray.data.loading import InMemorySource
from dpo_ray.data.tokenize import TokenizeSettings

README = Path(__file__).parents[1].joinpath("README.md").read_text()
EXAMPLE = README.split("## Use from Python\n")[1].split("```python\n")[1].split("```")[0]
RECIPES = Path(dpo_ray.__file__).parent / "configs" / "recipe"


def test_config_composes_as_the_cli_does_with_the_recipe_of_a_built_in_model():
    recipe = yaml.safe_load((RECIPES / "embedded.yaml").read_text())
    cfg = dpo_ray.config("algo.beta=0.3")
    assert cfg.algo.beta == 0.3
    assert cfg.train.lr == recipe["train"]["lr"] != type(cfg.train)().lr  # the recipe, not the schema default
    assert dpo_ray.config("algo.beta=0.3", "train.lr=0.5").train.lr == 0.5  # the user's option wins
    with pytest.raises(ValueError, match="algo.betta: unknown option"):
        dpo_ray.config("algo.betta=0.3")


def test_a_config_changed_in_python_is_checked_before_anything_starts(tmp_path):
    cfg = dpo_ray.config(f"output_dir={tmp_path / 'run'}")
    cfg.algo.beta = -1.0
    with pytest.raises(ValueError, match="algo.beta"):
        dpo_ray.train(cfg, train_dataset=[{"prompt": "p", "chosen": "c", "rejected": "r"}])
    assert not (tmp_path / "run").exists()


def test_in_memory_rows_load_as_the_same_rows_from_a_file_and_bad_ones_are_named(tokenizer, tmp_path):
    rows = [{"prompt": f"Write {n} in words.", "chosen": "x y", "rejected": "x"} for n in range(4)]
    datasets.Dataset.from_list(rows).to_json(str(tmp_path / "rows.jsonl"))
    from_file = load_pairs([str(tmp_path / "rows.jsonl")], tokenizer, TokenizeSettings())[0]
    for given in (rows, datasets.Dataset.from_list(rows)):
        assert load_pairs([InMemorySource(given, "train_dataset")], tokenizer, TokenizeSettings())[0] == from_file
    bad = rows[:2] + [{"prompt": "p", "rejected": "r"}]
    with pytest.raises(DataError, match=re.escape("train_dataset: row 2: field 'chosen'")):
        load_pairs([InMemorySource(bad, "train_dataset")], tokenizer, TokenizeSettings())
    with pytest.raises(ValueError, match="train_dataset: a dict of train, test; give one split"):
        InMemorySource(datasets.DatasetDict(train=datasets.Dataset.from_list(rows), test=None), "train_dataset")


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, task_cache_dir, capsys):
    """With the session's task cache (the embedded task is built once per session) in every composed config."""
    composed = dpo_ray.config
    monkeypatch.setattr(dpo_ray, "config", lambda *o, **k: composed(*o, f"cache_dir={task_cache_dir}", **k))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(EXAMPLE, "README.md", "exec"), namespace)
    result, rows = namespace["result"], namespace["rows"]

    run_dir = tmp_path / "runs" / "from_python"
    assert result.run_dir.resolve() == run_dir and result.final_model.resolve() == run_dir / "final"
    assert (run_dir / "final" / "config.json").exists() and result.report.exists()
    assert (
        result.summary == (run_dir / "summary.md").read_text().rstrip("\n")
        and result.summary in capsys.readouterr().out
    )
    cfg = namespace["cfg"]
    held_out = min(max(1, round(cfg.data.eval_fraction * len(rows))), len(rows) - 1)  # split_eval's rule, by hand
    assert f"{len(rows) - held_out} train pairs and {held_out} held out of train_dataset" in result.summary
    steps = [row for row in result.metrics if "loss" in row]
    assert len(steps) == math.ceil((len(rows) - held_out) / cfg.train.batch_size)  # one epoch
    assert result.metrics[-1]["eval_rewards/accuracies"] > 0.5  # it learned the hyphen

    again = dpo_ray.train(cfg, train_dataset=rows)  # this very run, finished: nothing runs, the same result
    assert again.nothing_ran and again.summary == result.summary and again.metrics == result.metrics
