"""Full model weights as an inference engine wants them: HF names, LoRA merged in, serialised once."""

from __future__ import annotations

import torch

PEFT_PREFIX = "base_model.model."


def merge_lora_state(
    state: dict[str, torch.Tensor], scaling: float, adapter: str = "default"
) -> dict[str, torch.Tensor]:
    """A peft LoRA model's full state dict -> the base model's, with W + scaling * B @ A for every adapted layer."""
    merged: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if ".lora_" in name:
            continue
        key = name.removeprefix(PEFT_PREFIX)
        if ".base_layer." in name:
            stem = name.split(".base_layer.")[0]
            key = key.replace(".base_layer.", ".")
            if name.endswith(".weight") and f"{stem}.lora_A.{adapter}.weight" in state:
                a, b = state[f"{stem}.lora_A.{adapter}.weight"], state[f"{stem}.lora_B.{adapter}.weight"]
                tensor = (tensor.float() + scaling * (b.float() @ a.float())).to(tensor.dtype)
        merged[key] = tensor
    return merged


def weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """safetensors bytes of every named tensor. A tensor shared under two names (tied embeddings) is stored under
    both: vLLM's in-place reload does not re-tie lm_head, so a missing name would keep its old weights."""
    from safetensors.torch import save

    seen, out = set(), {}
    for name, tensor in state.items():
        tensor = tensor.detach().contiguous().cpu()
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))
        out[name] = tensor.clone() if tensor.numel() and key in seen else tensor
        seen.add(key)
    return save(out)
