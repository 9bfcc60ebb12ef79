"""The arguments and environment a vLLM engine starts with, derived in one place for CPU and for GPU.

On a GPU the engine sizes its KV cache from the memory it may take and captures CUDA graphs; on CPU it gets an
explicit KV-cache size (vLLM would otherwise reserve 90% of the machine) and runs eager (compiling costs ~45 s).
Tensor-parallel engines use vLLM's multiprocessing executor inside the actor's own bundle of GPUs: inside a Ray
placement group vLLM would pick its Ray executor, which refuses bundles of more than one GPU.
"""

from __future__ import annotations

from ..schema import RolloutConfig

CPU_KV_CACHE_MB = 256  # plenty for the short sequences a CPU run can afford
SUPPORTED_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's accepted max_lora_rank values


def separate_process(cfg: RolloutConfig, gpus: float) -> bool:
    """Whether vLLM's engine core runs in its own process: as vLLM runs by default (and must, with tensor
    parallelism), unless a CPU run keeps it in the actor's process, which starts sooner (no second process)."""
    if str(cfg.engine_process) != "auto":
        return str(cfg.engine_process) == "separate"
    return bool(gpus) or cfg.tensor_parallel_size > 1


def engine_env(cfg: RolloutConfig, gpus: float) -> dict[str, str]:
    """Environment of an engine's actor. An in-process engine pins the threads of its process (vLLM no-ops
    torch.set_num_threads there), which is why no training ever shares it."""
    from .device import passed_on  # here, not at import: validation reads this module without loading torch

    env = {**passed_on(), "TOKENIZERS_PARALLELISM": "false"}
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if separate_process(cfg, gpus) else "0"
    if not gpus and cfg.tensor_parallel_size > 1:
        env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"  # vLLM would bind each CPU worker to a NUMA node of its own
    return env


def lora_rank_slot(r: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds rank r."""
    for slot in SUPPORTED_LORA_RANKS:
        if slot >= r:
            return slot
    raise ValueError(f"model.lora.r={r}: vLLM serves LoRA ranks up to {SUPPORTED_LORA_RANKS[-1]}")


def engine_args(cfg: RolloutConfig, gpus: float, dtype: str, run_max_model_len: int, lora_rank: int, seed: int) -> dict:
    """vLLM's LLM(...) keyword arguments (all but the model) for an engine with `gpus` GPUs (0: CPU).

    run_max_model_len: the longest prompt + response the run produces (0: unknown), used unless
    rollout.max_model_len names one. lora_rank: serve LoRA adapters up to this rank (0: none)."""
    args: dict = dict(
        dtype=dtype,
        seed=seed,
        tensor_parallel_size=cfg.tensor_parallel_size,
        worker_extension_cls="dpo_ray.workers.vllm_weights.WeightReceiver",
    )
    if cfg.max_model_len or run_max_model_len:
        args["max_model_len"] = cfg.max_model_len or run_max_model_len
    if gpus:
        args["enforce_eager"] = not cfg.cuda_graphs
        if cfg.kv_cache_memory_mb:
            args["kv_cache_memory_bytes"] = cfg.kv_cache_memory_mb << 20
        else:
            args["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    else:
        args["enforce_eager"] = True
        args["kv_cache_memory_bytes"] = (cfg.kv_cache_memory_mb or CPU_KV_CACHE_MB) << 20
    if cfg.tensor_parallel_size > 1:
        args["distributed_executor_backend"] = "mp"
    if lora_rank:
        args.update(enable_lora=True, max_lora_rank=lora_rank_slot(lora_rank), max_loras=1)
    return args
