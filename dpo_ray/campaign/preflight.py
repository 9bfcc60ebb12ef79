"""The inputs a run names, checked before anything is built, started or loaded: model directories (that they hold a
config and safetensors weights), data and prompt files, and the reward. Cheap checks on paths and names only; the
rows themselves are checked as they are tokenised, still before Ray starts."""

from __future__ import annotations

from pathlib import Path

from ..model_dir import TOKENIZER_FILES, has_tokenizer, weights_problem
from ..reward_source import RewardKind, reward_source
from ..schema import RunConfig
from ..tasks.registry import JUDGE_MODELS, MODELS, REWARD_MODELS, task_builtins

PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


class InputError(ValueError):
    """An input the run names does not exist or cannot be used; the message names the option and the path."""


def check_inputs(cfg: RunConfig, command: str, data_given: bool = False) -> None:
    """Raise an InputError for the first input of `dpo-ray COMMAND` that is missing or unusable; model options given
    as Hub ids become the local HF cache's directories (downloaded first when allowed). data_given: the train pairs
    come in Python (dpo_ray.train(cfg, train_dataset=...)), not from data.train_files."""
    from .hub_models import resolve_hub_models

    resolve_hub_models(cfg)
    m = cfg.model
    check_attention_kernel(str(m.attn_implementation))
    if m.path not in MODELS:
        check_model_dir("model.path", m.path, f"or a built-in name: {', '.join(MODELS)}", tokenizer=True)
    if m.start_from:
        check_model_dir("model.start_from", m.start_from, tokenizer=False)
    if m.reference_path:
        check_model_dir("model.reference_path", m.reference_path, tokenizer=False)
    has_task_data = MODELS.get(m.path) is not None and MODELS[m.path].data
    if command == "train" and not cfg.data.train_files and not has_task_data and not data_given:
        raise InputError(
            "data.train_files is empty: name preference files (data.train_files=[FILE,...]), or use "
            "model.path=embedded for the built-in task"
        )
    for option in ("data.train_files", "data.eval_files"):
        if command == "train" or (option == "data.train_files" and cfg.online.offline_ratio > 0):
            check_files(option, getattr(cfg.data, option.split(".")[1]))
    if command == "online":
        _check_online(cfg, has_task_data)


FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def check_attention_kernel(attention: str) -> None:
    """A flash-attention implementation needs its package installed: without it transformers tries to fetch a kernel
    from the Hub at run time, in every rank, after the models have loaded (or fails there on a cluster without
    internet)."""
    import importlib.util

    package = FLASH_PACKAGES.get(attention)
    if package and importlib.util.find_spec(package) is None:
        raise InputError(
            f"model.attn_implementation={attention} needs the {package} package, which is not installed here: "
            "install it on every node (pip install flash-attn --no-build-isolation), or use "
            "model.attn_implementation=sdpa"
        )


def _check_online(cfg: RunConfig, has_task_data: bool) -> None:
    o, reward = cfg.online, reward_source(cfg)
    task_prompts = any(b.prompts for b in task_builtins(cfg))
    if not o.prompt_files and not task_prompts:
        raise InputError(
            "online runs need prompts: online.prompt_files=[FILE,...], online.prompt_task=imdb, or model.path=embedded"
        )
    check_files("online.prompt_files", o.prompt_files)
    check_files("online.eval_prompt_files", o.eval_prompt_files)
    if o.offline_ratio > 0 and not cfg.data.train_files and not has_task_data:
        raise InputError(f"online.offline_ratio={o.offline_ratio}: needs data.train_files to draw offline pairs from")
    check_reward_function(cfg)
    builtins = {RewardKind.model: REWARD_MODELS, RewardKind.judge_model: JUDGE_MODELS}.get(reward.kind)
    if builtins is not None and reward.target not in builtins:
        check_model_dir(reward.option, reward.target, f"or a built-in name: {', '.join(builtins)}", tokenizer=True)
    check_eval_judge(cfg)
    if not reward.target:  # no reward option, and no task rule either
        raise InputError(
            "online runs need a reward: reward.fn=module:function (a rule), reward.model_path=DIR (a model), or a "
            "pairwise judge (reward.judge_model=DIR or reward.judge_fn=module:function)"
        )


def check_reward_function(cfg: RunConfig) -> None:
    """reward.fn or reward.judge_fn imports (from the launch directory too) and names a function."""
    from ..workers.reward import import_function

    reward = reward_source(cfg)
    if reward.kind in (RewardKind.rule, RewardKind.judge_fn):
        try:
            import_function(reward.target, reward.option)
        except ValueError as error:
            raise InputError(str(error)) from None


def check_eval_judge(cfg: RunConfig) -> None:
    """eval.judge_fn imports and names a function, eval.judge_model is a model directory or a built-in judge, and
    eval.reference_answers exists."""
    from ..workers.reward import import_function

    e = cfg.eval
    if e.judge_fn:
        try:
            import_function(e.judge_fn, "eval.judge_fn")
        except ValueError as error:
            raise InputError(str(error)) from None
    if e.judge_model and e.judge_model not in JUDGE_MODELS:
        check_model_dir("eval.judge_model", e.judge_model, f"or a built-in name: {', '.join(JUDGE_MODELS)}", True)
    if e.reference_answers:
        check_files("eval.reference_answers", [e.reference_answers])


def check_files(option: str, paths: list[str]) -> None:
    """Each a file or directory that exists (SOURCE:SPLIT names a split of one), or a dataset name (loaded later)."""
    from ..data.loading import is_dataset_name, split_spec

    for path in paths:
        source, _ = split_spec(path)
        if not Path(source).expanduser().exists() and not is_dataset_name(source):
            raise InputError(f"{option}: {path}: no such file or directory (nor a dataset name: OWNER/NAME[:SPLIT])")


def check_model_dir(option: str, path: str, alternatives: str = "", tokenizer: bool = True) -> None:
    """An HF model directory with a config and safetensors weights that read (each file's header and extent), and
    with tokenizer (a tokenizer is loaded from it) its tokenizer files. Pickled weights (pytorch_model.bin) are
    refused: loading a pickle runs whatever code it holds, and the ranks would fail on them later, after Ray has
    started."""
    root = Path(path).expanduser()
    if not root.is_dir():
        expected = "an HF model directory" + (f", {alternatives}" if alternatives else "")
        raise InputError(f"{option}={path!r}: no such directory ({expected})")
    if not (root / "config.json").exists():
        raise InputError(f"{option}={path!r}: no config.json; is it an HF model directory?")
    if not any(root.glob("*.safetensors")):
        pickled = sorted(p.name for pattern in PICKLED_WEIGHTS for p in root.glob(pattern))
        if pickled:
            raise InputError(
                f"{option}={path!r}: its weights are only in {pickled[0]}, a pickle, which dpo-ray does not load "
                '(loading a pickle runs the code it holds). Convert them to safetensors once, e.g. python -c "from '
                f"transformers import AutoModelForCausalLM as M; M.from_pretrained('{path}').save_pretrained("
                f"'{path}-safetensors')\""
            )
        raise InputError(f"{option}={path!r}: holds no *.safetensors weights")
    problem = weights_problem(root)
    if problem:
        raise InputError(f"{option}={path!r}: {problem}")
    if tokenizer and not has_tokenizer(root):
        raise InputError(
            f"{option}={path!r}: no tokenizer files ({', '.join(TOKENIZER_FILES)}): save the model's tokenizer into "
            "it (tokenizer.save_pretrained(DIR))"
        )
