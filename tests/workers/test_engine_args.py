"""The arguments a vLLM engine starts with, for CPU and for a GPU, and where its engine core runs."""

from __future__ import annotations

import pytest

from dpo_ray.schema import RolloutConfig
from dpo_ray.workers.engine_args import engine_args, engine_env, lora_rank_slot, separate_process


def test_a_cpu_engine_gets_an_explicit_kv_cache_runs_eager_and_inline():
    cfg = RolloutConfig()
    args = engine_args(cfg, gpus=0, dtype="float32", run_max_model_len=300, lora_rank=0, seed=5)
    assert args["kv_cache_memory_bytes"] == 256 << 20 and "gpu_memory_utilization" not in args
    assert args["enforce_eager"] is True and args["max_model_len"] == 300 and args["seed"] == 5
    assert "enable_lora" not in args and "distributed_executor_backend" not in args
    assert engine_env(cfg, 0)["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    cfg.kv_cache_memory_mb, cfg.max_model_len = 64, 128
    args = engine_args(cfg, gpus=0, dtype="float32", run_max_model_len=300, lora_rank=0, seed=5)
    assert args["kv_cache_memory_bytes"] == 64 << 20 and args["max_model_len"] == 128


def test_a_gpu_engine_sizes_its_cache_from_its_memory_share_and_captures_cuda_graphs():
    cfg = RolloutConfig()
    args = engine_args(cfg, gpus=1, dtype="bfloat16", run_max_model_len=8192, lora_rank=0, seed=0)
    assert args["gpu_memory_utilization"] == 0.85 and "kv_cache_memory_bytes" not in args
    assert args["enforce_eager"] is False and args["max_model_len"] == 8192 and args["dtype"] == "bfloat16"
    assert engine_env(cfg, 1)["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert "max_model_len" not in engine_args(cfg, 1, "bfloat16", 0, 0, 0)  # unknown: the model's own limit
    cfg.cuda_graphs, cfg.kv_cache_memory_mb = False, 2048
    args = engine_args(cfg, gpus=1, dtype="bfloat16", run_max_model_len=8192, lora_rank=0, seed=0)
    assert args["enforce_eager"] is True and args["kv_cache_memory_bytes"] == 2048 << 20


def test_tensor_parallel_engines_use_the_multiprocessing_executor_in_their_own_process():
    cfg = RolloutConfig(tensor_parallel_size=4)
    args = engine_args(cfg, gpus=4, dtype="bfloat16", run_max_model_len=4096, lora_rank=0, seed=0)
    assert args["distributed_executor_backend"] == "mp" and args["tensor_parallel_size"] == 4
    assert separate_process(cfg, 0) and engine_env(cfg, 0)["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in engine_env(cfg, 4)
    assert separate_process(RolloutConfig(engine_process="separate"), 0)
    assert not separate_process(RolloutConfig(engine_process="inline"), 1)


def test_lora_engines_serve_adapters_in_the_smallest_rank_slot_vllm_accepts():
    args = engine_args(RolloutConfig(), gpus=0, dtype="float32", run_max_model_len=0, lora_rank=12, seed=0)
    assert args["enable_lora"] is True and args["max_lora_rank"] == 16 and args["max_loras"] == 1
    assert [lora_rank_slot(r) for r in (1, 2, 8, 64, 300)] == [1, 8, 8, 64, 320]
    with pytest.raises(ValueError, match="up to 512"):
        lora_rank_slot(513)
