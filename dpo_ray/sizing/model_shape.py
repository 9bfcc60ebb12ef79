"""A model's shape from its config.json alone (no weights): parameter counts (all, LoRA-trainable, the largest module's
own) and the sizes the memory formulas need. The model is built on torch's meta device, so the counts are exact for
any architecture transformers knows, and a 70B model is counted in a second on a laptop."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class ModelShape:
    params: int
    largest_module_params: int  # the most parameters one module owns directly: what ZeRO-3 gathers at once
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_positions: int
    largest_file_bytes: int  # the largest *.safetensors file in the directory (0: a config alone)
    lora_params: dict[tuple, int]  # LoRA setting (lora_setting's key) -> the parameters it trains, for those asked for
    active_params: int = 0  # parameters one token runs through: a mixture of experts' chosen experts only (0: all)
    experts: tuple[int, int] = (0, 0)  # a mixture of experts': (experts per layer, experts per token); (0, 0): dense

    def trainable(self, lora: tuple | None = None) -> int:
        """Parameters the optimizer updates: all, or what a LoRA setting trains."""
        return self.lora_params[lora] if lora else self.params


def lora_setting(r: int, targets: str, dora: bool = False, saved: tuple = (), bias: str = "none") -> tuple:
    """The LoRA settings that decide what it trains, as a key: rank, target modules, DoRA, modules trained in full,
    biases."""
    return (r, targets, dora, tuple(saved), bias)


def lora_trained(model, setting: tuple) -> int:
    """Parameters a LoRA setting trains: r (in + out) per adapted Linear, DoRA's magnitude per output row, the
    modules saved in full, and the biases it frees (all, or those of adapted layers)."""
    r, targets, dora, saved, bias = setting
    output_layer, count = model.get_output_embeddings(), 0
    for name, m in model.named_modules():
        if any(name == s or name.endswith(f".{s}") for s in saved):
            count += sum(p.numel() for p in m.parameters())
        elif lora_targets(name, m, targets, output_layer):
            count += r * (m.in_features + m.out_features) + (m.out_features if dora else 0)
            count += m.bias.numel() if bias == "lora_only" and m.bias is not None else 0
        if bias == "all":
            count += sum(p.numel() for n, p in m.named_parameters(recurse=False) if n == "bias")
    return count


def lora_targets(name: str, module, target_modules: str, output_layer) -> bool:
    """Whether peft's LoRA adapts this module: 'all-linear' is every Linear but the output layer; a list matches a
    module whose name is one of the names or ends with '.<name>'."""
    import torch

    if not isinstance(module, torch.nn.Linear):
        return False
    if target_modules == "all-linear":
        return module is not output_layer
    return any(name == t or name.endswith(f".{t}") for t in (t.strip() for t in target_modules.split(",")))


@lru_cache(maxsize=16)
def model_shape(
    path: str, trust_remote_code: bool = False, lora: tuple[tuple, ...] = (), classifier: bool = False
) -> ModelShape:
    """The shape of the causal LM (or sequence classifier: a reward model) in directory path (its config.json), with
    what each LoRA setting (lora_setting) trains."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    if not (Path(path).expanduser() / "config.json").exists():
        raise ValueError(f"{path}: no config.json")
    config = AutoConfig.from_pretrained(Path(path).expanduser(), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        kind = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
        model = kind.from_config(config, trust_remote_code=trust_remote_code)
    adapters = {setting: lora_trained(model, setting) for setting in lora}
    text = config.get_text_config()
    heads = text.num_attention_heads
    return ModelShape(
        params=sum(p.numel() for p in model.parameters()),
        largest_module_params=max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()),
        hidden=text.hidden_size,
        intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size),
        layers=text.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        vocab=text.vocab_size,
        max_positions=getattr(text, "max_position_embeddings", 0) or 0,
        largest_file_bytes=max((f.stat().st_size for f in Path(path).expanduser().glob("*.safetensors")), default=0),
        lora_params=adapters,
        **mixture_of_experts(model, text),
    )


def mixture_of_experts(model, text_config) -> dict:
    """A mixture of experts' active parameters and expert counts (transformers holds each layer's experts under
    .experts., fused or one module each); nothing for a dense model."""
    count = getattr(text_config, "num_local_experts", None) or getattr(text_config, "num_experts", None) or 0
    per_token = getattr(text_config, "num_experts_per_tok", None) or 0
    expert_params = sum(p.numel() for name, p in model.named_parameters() if ".experts." in f".{name}")
    if not (count and per_token and expert_params):
        return {}
    total = sum(p.numel() for p in model.parameters())
    return {"active_params": round(total - expert_params * (1 - per_token / count)), "experts": (count, per_token)}
