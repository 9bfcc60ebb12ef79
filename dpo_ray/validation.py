"""One check of a whole run configuration, right after it is composed and before anything starts: every option's
value (choices and bounds, from the schema), the loss terms and the options each reads, and the rules that tie
options together, one function per section (SECTION_RULES). Every problem is reported at once, one line each: the
option, its value, what is allowed."""

from __future__ import annotations

import difflib

from .adapter_sync import unservable_adapter
from .losses.registry import LOSSES, Kind, is_unpaired, loss_names, names_of, readers
from .options import Choice, options, shown, value_at
from .report.trackers import report_problems
from .run_storage import problems as storage_problems
from .schema import RunConfig
from .sizing.zero_stage import STAGES, stage_problem


class ConfigError(ValueError):
    """Options that cannot run together or at all; the message has one line per problem."""


def closest(word: str, known: list[str]) -> str:
    """'; did you mean X?' for the nearest known word, or ''."""
    match = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else ""


def validate(cfg: RunConfig) -> RunConfig:
    """cfg, or a ConfigError listing every problem."""
    problems = _values(cfg) + _losses(cfg) + [p for rules in SECTION_RULES for p in rules(cfg)]
    if problems:
        raise ConfigError("\n".join(problems))
    return cfg


def _values(cfg: RunConfig) -> list[str]:
    """Each option against its own choices or bounds."""
    problems = []
    for option in options(RunConfig):
        value = value_at(cfg, option.name)
        if isinstance(option.type, type) and issubclass(option.type, Choice):
            allowed = [m.value for m in option.type]
            if value not in allowed:
                problems.append(f"{option.name}={shown(value)}: must be one of {', '.join(allowed)}")
        elif option.bounds is not None and not option.bounds.allows(value):
            problems.append(f"{option.name}={shown(value)}: must be {option.bounds}")
    return problems


def _losses(cfg: RunConfig) -> list[str]:
    """The loss terms exist, have one weight each, and every loss option set is read by one of them."""
    algo, names = cfg.algo, loss_names(cfg.algo.loss_type)
    unknown = [n for n in names if n not in LOSSES]
    if not names or unknown:
        word = unknown[0] if unknown else ""
        return [
            f"algo.loss_type={algo.loss_type!r}: unknown loss {word!r}{closest(word, list(LOSSES))} "
            f"(known: {', '.join(LOSSES)})"
        ]
    problems = []
    if algo.loss_weights and len(algo.loss_weights) != len(names):
        problems.append(
            f"algo.loss_weights={list(algo.loss_weights)}: {len(algo.loss_weights)} weight(s) for {len(names)} loss "
            f"type(s) in algo.loss_type={algo.loss_type!r}"
        )
    takers = [n for n in names if LOSSES[n].label_smoothing is not None]
    if algo.label_smoothing and not takers:
        cdpo = "; for conservative DPO on sigmoid set algo.cdpo_label_smoothing" if "sigmoid" in names else ""
        users = ", ".join(readers("label_smoothing"))
        problems.append(
            f"algo.label_smoothing={algo.label_smoothing!r}: read by {users} only, not by {algo.loss_type!r}{cdpo}"
        )
    for name in takers:
        bounds = LOSSES[name].label_smoothing
        if not bounds.allows(algo.label_smoothing):
            hint = " (the EXO paper uses 1e-3)" if name == "exo_pair" else ""
            problems.append(f"algo.label_smoothing={algo.label_smoothing!r}: {name} needs it {bounds}{hint}")
    f_type = str(algo.f_divergence_type)
    unsupported = [n for n in names if not LOSSES[n].f_divergence]
    if f_type != "reverse_kl" and unsupported:
        takers = ", ".join(readers("f_divergence_type"))
        problems.append(
            f"algo.f_divergence_type={f_type}: only for the losses built on the chosen-rejected difference ({takers}), "
            f"not {', '.join(unsupported)}"
        )
    if algo.f_alpha_divergence_coef != type(algo)().f_alpha_divergence_coef and f_type != "alpha_divergence":
        problems.append(
            f"algo.f_alpha_divergence_coef={algo.f_alpha_divergence_coef!r}: read by "
            f"f_divergence_type=alpha_divergence only, not {f_type}"
        )
    unpaired = [n for n in names if LOSSES[n].kind is Kind.UNPAIRED]
    if unpaired and len(names) > 1:
        problems.append(
            f"algo.loss_type={algo.loss_type!r}: {unpaired[0]} trains on labelled completions, not pairs; it takes no "
            "other loss beside it"
        )
    kto_free = {"rpo_alpha": 0.0, "use_weighting": False, "ld_alpha": None}  # pair-only options
    for option, off in kto_free.items():
        if unpaired and getattr(algo, option) != off:
            problems.append(f"algo.{option}={getattr(algo, option)!r}: not with {unpaired[0]} (a pair option)")
    sorting = [n for n in names if LOSSES[n].sorts_batch]
    if algo.use_weighting and sorting:
        problems.append(
            f"algo.use_weighting=true: not with {', '.join(sorting)}, which sort the pairs and would misalign the "
            "per-pair weights (as TRL)"
        )
    defaults = type(algo)()
    for option in sorted({o for loss in LOSSES.values() for o in loss.reads}):
        users = readers(option)
        if getattr(algo, option) != getattr(defaults, option) and not set(users) & set(names):
            problems.append(
                f"algo.{option}={getattr(algo, option)!r}: read by {', '.join(users)} only, "
                f"not by algo.loss_type={algo.loss_type!r}"
            )
    return problems


# transformers schedulers' arguments without a default: one of each tuple must be given in train.lr_scheduler_kwargs
SCHEDULER_NEEDS = {
    "cosine_with_min_lr": ("min_lr", "min_lr_rate"),
    "cosine_warmup_with_min_lr": ("min_lr", "min_lr_rate"),
    "warmup_stable_decay": ("num_decay_steps",),
}


def _scheduler(t) -> list[str]:
    """lr_scheduler_kwargs only for transformers' schedulers, with the arguments they cannot do without."""
    kind, kwargs = str(t.lr_scheduler), dict(t.lr_scheduler_kwargs)
    if kwargs and kind in ("cosine", "linear", "constant"):
        return [f"train.lr_scheduler_kwargs={kwargs}: read by transformers' schedulers only, not {kind}"]
    needs = SCHEDULER_NEEDS.get(kind, ())
    if needs and not set(needs) & set(kwargs):
        return [f"train.lr_scheduler={kind}: needs train.lr_scheduler_kwargs with {' or '.join(needs)}"]
    return []


def _reference_free(cfg: RunConfig) -> bool:
    """Whether every loss term does without a reference, so that none is loaded."""
    names = [n for n in loss_names(cfg.algo.loss_type) if n in LOSSES]
    return bool(names) and all(LOSSES[n].reference_free for n in names)


def _run(cfg: RunConfig) -> list[str]:
    """The run's own options: the trackers, the run's directories."""
    return report_problems(cfg.report_to) + storage_problems(cfg.output_dir, cfg.cache_dir)


def _model(cfg: RunConfig) -> list[str]:
    """A reference model of its own only where one is loaded, flash-attention on GPUs, a LoRA rank vLLM serves."""
    m, problems = cfg.model, []
    if m.reference_path and _reference_free(cfg):
        problems.append(
            f"model.reference_path={m.reference_path!r}: algo.loss_type={cfg.algo.loss_type!r} is reference-free, so "
            "no reference is loaded; drop model.reference_path or choose a loss that uses a reference"
        )
    elif m.reference_path and m.lora.enabled and m.reference_path != m.path:
        problems.append(
            f"model.reference_path={m.reference_path!r}: with model.lora.enabled=true the reference is the policy's "
            "base model with the adapter off, so it cannot be another model"
        )
    gpu = cfg.cluster.gpus_per_rank > 0
    if str(m.attn_implementation).startswith("flash_attention") and not gpu:
        problems.append(
            f"model.attn_implementation={shown(m.attn_implementation)}: needs GPUs (cluster.gpus_per_rank >= 1); "
            "on CPU use sdpa or eager"
        )
    if m.lora.enabled and str(cfg.rollout.lora_sync) != "merged" and m.lora.r > 512:
        problems.append(
            f"model.lora.r={m.lora.r}: vLLM serves LoRA adapters up to rank 512; set rollout.lora_sync=merged to "
            "sync merged weights instead"
        )
    return problems


def _data(cfg: RunConfig) -> list[str]:
    """data.columns maps onto the columns a pair has."""
    from .data.formats import COLUMNS

    return [
        f"data.columns={dict(cfg.data.columns)}: {column!r} maps onto {target!r}; the targets are {', '.join(COLUMNS)}"
        for column, target in dict(cfg.data.columns).items()
        if target not in COLUMNS
    ]


def _algo(cfg: RunConfig) -> list[str]:
    """TR-DPO moves a reference of its own; its two settings are read only when it is on (the loss terms: _losses)."""
    algo = cfg.algo
    defaults = type(algo)()
    if not algo.sync_ref_model:
        return [
            f"algo.{name}={getattr(algo, name)!r}: read by algo.sync_ref_model=true only (TR-DPO)"
            for name in ("ref_model_mixup_alpha", "ref_model_sync_steps")
            if getattr(algo, name) != getattr(defaults, name)
        ]
    if _reference_free(cfg):
        return [f"algo.sync_ref_model=true: algo.loss_type={algo.loss_type!r} is reference-free; nothing to sync"]
    if cfg.model.lora.enabled:
        return [
            "algo.sync_ref_model=true: with model.lora.enabled=true the reference is the policy's base with the "
            "adapter off, which cannot move on its own (as TRL); train all weights (model.lora.enabled=false)"
        ]
    return []


def _train(cfg: RunConfig) -> list[str]:
    """The scheduler's arguments, warmup as whole steps or a share, and two Adam betas."""
    t = cfg.train
    problems = _scheduler(t)
    if t.warmup_steps >= 1 and t.warmup_steps != int(t.warmup_steps):
        problems.append(
            f"train.warmup_steps={t.warmup_steps!r}: a number of steps must be whole (below 1: a share of all steps)"
        )
    betas = list(t.adam_betas)
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        problems.append(f"train.adam_betas={betas}: must be two numbers in [0, 1)")
    return problems


def _deepspeed(cfg: RunConfig) -> list[str]:
    """A directory for nvme offload, and a ZeRO stage that suits the dtype, offload and LoRA's saved modules."""
    d, m, problems = cfg.deepspeed, cfg.model, []
    if "nvme" in (d.offload_optimizer, d.offload_param) and not d.nvme_path:
        problems.append("deepspeed.nvme_path='': offload to nvme needs a directory on an NVMe drive")
    gpu = cfg.cluster.gpus_per_rank > 0
    dtype = str(m.dtype) if str(m.dtype) != "auto" else ("bfloat16" if gpu else "float32")
    limits = dtype, str(d.offload_optimizer), str(d.offload_param), m.lora.enabled and bool(m.lora.modules_to_save)
    if str(d.zero_stage) != "auto":
        why = stage_problem(int(str(d.zero_stage)), *limits)
        if why:
            problems.append(f"deepspeed.zero_stage={d.zero_stage}: {why}")
    elif all(stage_problem(s, *limits) for s in STAGES):
        reasons = "; ".join(sorted({stage_problem(s, *limits) for s in STAGES}))
        problems.append(f"deepspeed.zero_stage=auto: no ZeRO stage suits these options ({reasons})")
    return problems


def _cluster(cfg: RunConfig) -> list[str]:
    """Whole GPUs per rank; a run may shrink only to fewer ranks than it has; whole sequence-parallel groups."""
    c, problems = cfg.cluster, []
    if c.gpus_per_rank > 0 and c.gpus_per_rank != int(c.gpus_per_rank):
        problems.append(
            f"cluster.gpus_per_rank={c.gpus_per_rank!r}: must be 0 or a whole number; NCCL ranks cannot share a GPU "
            "(two ranks on one GPU fail with 'Duplicate GPU detected')"
        )
    if c.min_policy_ranks and c.min_policy_ranks >= c.policy_ranks:
        problems.append(
            f"cluster.min_policy_ranks={c.min_policy_ranks}: must be below cluster.policy_ranks={c.policy_ranks} "
            "(0: never go on with fewer)"
        )
    sp = c.sequence_parallel_size
    if sp > 0 and c.policy_ranks % sp:
        problems.append(
            f"cluster.sequence_parallel_size={sp}: must divide cluster.policy_ranks={c.policy_ranks} (each "
            "sequence-parallel group is whole)"
        )
    if sp > 1 and str(cfg.model.attn_implementation) == "eager":
        problems.append(
            f"cluster.sequence_parallel_size={sp}: needs model.attn_implementation=sdpa or flash_attention_* (each "
            "model defines its own eager attention, which dpo-ray cannot wrap)"
        )
    return problems


def _rollout(cfg: RunConfig) -> list[str]:
    """Tensor-parallel engines (rollout's and the judge's) in processes of their own; an adapter vLLM can serve."""
    r, problems = cfg.rollout, []
    if cfg.reward.judge_tensor_parallel_size > 1 and str(r.engine_process) == "inline":
        problems.append(
            f"rollout.engine_process=inline: a tensor-parallel judge engine (reward.judge_tensor_parallel_size="
            f"{cfg.reward.judge_tensor_parallel_size}) runs its workers in processes of their own; use auto or separate"
        )
    if r.tensor_parallel_size > 1 and str(r.engine_process) == "inline":
        problems.append(
            f"rollout.engine_process=inline: a tensor-parallel engine (rollout.tensor_parallel_size="
            f"{r.tensor_parallel_size}) runs its workers in processes of their own; use auto or separate"
        )
    lora = cfg.model.lora
    unservable = unservable_adapter(lora) if lora.enabled else []
    if unservable and str(r.lora_sync) == "adapter":
        problems.append(
            f"rollout.lora_sync=adapter: vLLM cannot serve an adapter with model.lora.{', '.join(unservable)}; use "
            "rollout.lora_sync=merged (or auto)"
        )
    return problems


def _reward(cfg: RunConfig) -> list[str]:
    return _judge(cfg.reward)


def _online(cfg: RunConfig) -> list[str]:
    """Sample labels only for an unpaired loss, fresh prompts only from a subset per round, and a built-in prompt task
    that exists."""
    from .tasks.registry import PROMPT_TASKS

    o, problems = cfg.online, []
    if o.desirable_threshold is not None and not is_unpaired(cfg.algo.loss_type):
        problems.append(
            f"online.desirable_threshold={o.desirable_threshold!r}: labels samples for an unpaired loss "
            f"(algo.loss_type={' or '.join(names_of(Kind.UNPAIRED))}), not algo.loss_type={cfg.algo.loss_type!r}"
        )
    if o.prompt_order == "fresh" and not o.prompts_per_round:
        problems.append(
            "online.prompt_order=fresh: read with online.prompts_per_round > 0 only (0: every prompt, every round)"
        )
    problems += _reference_update(cfg) + _eval_judge(cfg)
    if o.prompt_task and o.prompt_task not in PROMPT_TASKS:
        problems.append(
            f"online.prompt_task={o.prompt_task!r}: must be empty or one of {', '.join(PROMPT_TASKS)}"
            + closest(o.prompt_task, list(PROMPT_TASKS))
        )
    return problems


def _reference_update(cfg: RunConfig) -> list[str]:
    """each_round moves a reference: a loss must have one, TR-DPO must not move it too, and the snapshot it keeps of
    the round's starting weights is copied from partitions in memory, not from NVMe."""
    name = "online.reference_update=each_round"
    if cfg.online.reference_update != "each_round":
        if cfg.monitor.kl_to == "round_reference":
            frozen = "frozen: every round's reference is the start"
            return [f"monitor.kl_to=round_reference: read with {name} only ({frozen})"]
        return []
    if _reference_free(cfg):
        return [f"{name}: algo.loss_type={cfg.algo.loss_type!r} is reference-free; there is no reference to update"]
    if cfg.algo.sync_ref_model:
        return [f"{name}: algo.sync_ref_model=true moves the reference too; choose one (TR-DPO within runs, or this)"]
    if cfg.deepspeed.offload_param == "nvme":
        return [f"{name}: deepspeed.offload_param=nvme swaps the partitions it copies; use none or cpu"]
    return []


def _eval_judge(cfg: RunConfig) -> list[str]:
    """One held-out judge at most; a baseline file only for a judge to read."""
    e = cfg.eval
    if e.judge_model == "policy":
        return ["eval.judge_model=policy: the yardstick would be the model it measures; name another judge"]
    if e.judge_model and e.judge_fn:
        return [f"eval.judge_model={e.judge_model!r}: not with eval.judge_fn={e.judge_fn!r}; one held-out judge"]
    if e.reference_answers and not (e.judge_model or e.judge_fn):
        return [f"eval.reference_answers={e.reference_answers!r}: read by eval.judge_model or eval.judge_fn only"]
    return []


def _embedded(cfg: RunConfig) -> list[str]:
    e = cfg.embedded
    if e.eval_numbers >= e.numbers:
        return [f"embedded.eval_numbers={e.eval_numbers}: must be below embedded.numbers={e.numbers}"]
    return []


def _imdb(cfg: RunConfig) -> list[str]:
    i = cfg.imdb
    if i.min_words > i.max_words:
        return [f"imdb.min_words={i.min_words}: must be <= imdb.max_words={i.max_words}"]
    return []


# Each section's rules, in the schema's order; a rule between sections sits with the option its message names first.
SECTION_RULES = (_run, _model, _data, _algo, _train, _deepspeed, _cluster, _rollout, _reward, _online, _embedded, _imdb)


def _judge(r) -> list[str]:
    """One judge at most, never beside a reward (each would score the samples), and a template with its fields."""
    from .data.tournament import FIELDS
    from .reward_source import JUDGES, OPTIONS

    given = {f"reward.{name}={getattr(r, name)!r}": kind for name, kind in OPTIONS.items() if getattr(r, name)}
    judges = [option for option, kind in given.items() if kind in JUDGES]
    if len(judges) > 1:
        return [f"{judges[0]}: not with {judges[1]}; one judge compares the samples"]
    rewards = [option for option, kind in given.items() if kind not in JUDGES]
    problems = [f"{judges[0]}: not with {reward}; a judge replaces the reward" for reward in rewards if judges]
    missing = [f for f in FIELDS if f not in r.judge_template]
    if r.judge_template and missing:
        problems.append(f"reward.judge_template: holds no {', '.join(missing)} (it must hold {', '.join(FIELDS)})")
    elif r.judge_template and not judges:
        problems.append("reward.judge_template: read by reward.judge_model or reward.judge_fn only; neither is set")
    return problems
