"""Built-in names resolve through one registry; everything else is the user's own."""

from __future__ import annotations

import pytest

from dpo_ray.compose import CONFIG_DIR
from dpo_ray.schema import RunConfig
from dpo_ray.tasks.registry import MODELS, PROMPT_TASKS, recipe, resolve_model, resolve_prompt_task


def test_a_directory_of_your_own_brings_nothing_but_itself():
    cfg = RunConfig()
    cfg.model.path = "/models/mine"
    task = resolve_model(cfg)
    assert task.model_path == "/models/mine" and not (task.train_files or task.prompts)
    assert task.metrics is None and recipe("/models/mine", "train") == ""
    assert resolve_prompt_task(cfg).prompts == []


def test_every_recipe_a_builtin_names_is_a_preset():
    named = {name for b in MODELS.values() for name in b.recipes.values()}
    assert named == {p.stem for p in (CONFIG_DIR / "recipe").glob("*.yaml")}
    assert recipe("embedded", "train") == "embedded" and recipe("embedded", "online") == "embedded_online"


def test_each_builtin_task_names_its_rule_reward_in_the_table():
    from dpo_ray.tasks import imdb, number_words
    from dpo_ray.workers.reward import import_function

    assert import_function(MODELS["embedded"].reward) is number_words.reward
    assert import_function(PROMPT_TASKS["imdb"].reward) is imdb.vader_reward
    assert not MODELS["smollm2-135m"].reward  # a model alone brings no task


@pytest.mark.slow  # builds the embedded task once per session (about 25 s)
def test_the_embedded_task_brings_data_prompts_and_its_metric(task_cache_dir):
    cfg = RunConfig()
    cfg.cache_dir = str(task_cache_dir)
    task = resolve_model(cfg)
    assert MODELS["embedded"].data and task.train_files and task.eval_files and task.metrics is not None
    assert task.prompts[0][0]["role"] == "user"
    assert set(PROMPT_TASKS) == {"imdb"}
