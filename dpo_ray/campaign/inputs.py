"""What a run trains on, ready before Ray starts: the inputs checked, built-in names resolved (and built once), the
config's own files preferred over a built-in task's, and the pairs tokenised."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..data.dataset import load_pairs, split_eval
from ..data.formats import Text
from ..data.loading import InMemorySource
from ..data.prompts import load_prompts, load_reference_answers
from ..data.tokenize import TokenizedPair, TokenizeSettings
from ..losses.registry import is_unpaired
from ..reward_source import RewardKind, RewardSource, eval_judge_config, reward_source
from ..schema import RunConfig
from ..tasks.registry import resolve_model, resolve_prompt_task
from ..workers.models import load_tokenizer
from .preflight import InputError, check_inputs

log = logging.getLogger(__name__)


@dataclass
class OfflineInputs:
    model_path: str
    reference_path: str
    train: list[TokenizedPair]
    eval: list[TokenizedPair]
    task_metrics: Callable[[Any, Any], dict[str, float]] | None = None  # (model, tokenizer) -> the task's own metrics
    data_note: str = ""  # where the train and held-out pairs came from, for the log and the summary


@dataclass
class OnlineInputs:
    model_path: str
    reference_path: str
    prompts: list[Text]
    eval_prompts: list[Text]
    reward: RewardSource  # resolved: a built-in reward or judge model name is its directory
    offline_pairs: list[TokenizedPair] = field(default_factory=list)
    eval_judge: RewardSource | None = None  # the held-out judge (eval.*), resolved
    eval_baseline: list[str] | None = None  # eval.reference_answers' answer to each held-out prompt


def offline_inputs(cfg: RunConfig, train_dataset: Any = None, eval_dataset: Any = None) -> OfflineInputs:
    """The train and held-out pairs: of data.train_files / data.eval_files, or of the rows handed over in Python
    (dpo_ray.train), which take their place; without held-out rows or files, a data.eval_fraction share is held out."""
    check_inputs(cfg, "train", data_given=train_dataset is not None)
    task = resolve_model(cfg)
    given = train_dataset is not None
    train_files = [InMemorySource(train_dataset, "train_dataset")] if given else list(cfg.data.train_files)
    train_files = train_files or task.train_files
    eval_files = [InMemorySource(eval_dataset, "eval_dataset")] if eval_dataset is not None else []
    eval_files = eval_files or list(cfg.data.eval_files) or ([] if given or cfg.data.train_files else task.eval_files)
    tokenizer = load_tokenizer(task.model_path, cfg.model.trust_remote_code)
    train = _pairs(cfg, "train", train_files, tokenizer)
    unit = "examples" if is_unpaired(cfg.algo.loss_type) else "pairs"
    if eval_files:
        evals = _pairs(cfg, "eval", eval_files, tokenizer)
        note = f"{len(train)} train {unit} of {', '.join(map(str, train_files))}; {len(evals)} held-out {unit} of " + (
            ", ".join(map(str, eval_files))
        )
    else:
        train, evals = split_eval(train, cfg.data.eval_fraction, cfg.data.shuffle_seed)
        note = (
            f"{len(train)} train {unit} and {len(evals)} held out of {', '.join(map(str, train_files))} "
            f"(data.eval_fraction={cfg.data.eval_fraction}, seed {cfg.data.shuffle_seed})"
        )
    log.info("data: %s", note)
    reference = cfg.model.reference_path or task.model_path
    return OfflineInputs(task.model_path, reference, train, evals, task.metrics, note)


def online_inputs(cfg: RunConfig) -> OnlineInputs:
    check_inputs(cfg, "online")
    o, task, prompt_task = cfg.online, resolve_model(cfg), resolve_prompt_task(cfg)
    columns = cfg.data.columns
    prompts = load_prompts(o.prompt_files, cfg.data.on_error, columns) if o.prompt_files else []
    eval_prompts = load_prompts(o.eval_prompt_files, cfg.data.on_error, columns) if o.eval_prompt_files else []
    prompts = prompts or prompt_task.prompts or task.prompts
    eval_prompts = eval_prompts or prompt_task.eval_prompts or task.eval_prompts
    tokenizer = load_tokenizer(task.model_path, cfg.model.trust_remote_code)
    if getattr(tokenizer, "chat_template", None) is None and any(isinstance(p, list) for p in prompts + eval_prompts):
        raise InputError(f"the prompts hold messages, and the tokenizer of {task.model_path} has no chat template")
    reward = reward_source(cfg).resolved(cfg)
    judge_dir = task.model_path if reward.kind is RewardKind.self_judge else reward.judge_model
    check_chat_judge(cfg, "reward.judge_model", cfg.reward.judge_model, judge_dir)
    judged = eval_judge_config(cfg)
    eval_judge = reward_source(judged).resolved(judged) if judged is not None else None
    if eval_judge is not None:
        check_chat_judge(cfg, "eval.judge_model", cfg.eval.judge_model, eval_judge.judge_model)
    answers = cfg.eval.reference_answers
    try:
        eval_baseline = load_reference_answers(answers, eval_prompts) if answers else None
    except ValueError as error:
        raise InputError(f"eval.reference_answers: {error}") from None
    offline_pairs: list[TokenizedPair] = []
    if o.offline_ratio > 0:
        offline_pairs = _pairs(cfg, "offline", list(cfg.data.train_files) or task.train_files, tokenizer)
    return OnlineInputs(
        task.model_path,
        cfg.model.reference_path or task.model_path,
        prompts,
        eval_prompts,
        reward,
        offline_pairs,
        eval_judge,
        eval_baseline,
    )


def check_chat_judge(cfg: RunConfig, option: str, given: str, directory: str) -> None:
    """A judge model is asked in a chat message: its tokenizer needs a chat template."""
    if directory and getattr(load_tokenizer(directory, cfg.model.trust_remote_code), "chat_template", None) is None:
        raise InputError(
            f"{option}={given!r}: the tokenizer of {directory} has no chat template; the judge is asked in a chat "
            "message, so give it an instruct (chat) model"
        )


def _pairs(cfg: RunConfig, name: str, files: list[str], tokenizer) -> list[TokenizedPair]:
    settings, unpaired = TokenizeSettings.of(cfg.data), is_unpaired(cfg.algo.loss_type)
    d = cfg.data
    pairs, report = load_pairs(files, tokenizer, settings, d.on_error, d.columns, unpaired, cfg.cache_dir, cfg.progress)
    log.info("%s data: %s", name, report.summary())
    if report.dropped:
        log.warning("%s data: %s", name, report.dropped_note())
    return pairs
