"""Loading models and tokenizers (safetensors only), and a cheap content fingerprint of a model directory."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def disable_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout of a model (TRL's disable_dropout): its nn.Dropout modules and the dropout rates attention
    layers and the config keep as numbers (Llama's attention_dropout is one)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    config = getattr(model, "config", None)
    for name, value in vars(config).items() if config is not None else ():
        if "dropout" in name and isinstance(value, float):
            setattr(config, name, 0.0)


def load_causal_lm(path: str, dtype: torch.dtype, attn_implementation: str = "sdpa", trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path,
        dtype=dtype,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
    )


def model_fingerprint(path: str, edge_bytes: int = 1 << 20) -> str:
    """sha256 over config, tokenizer files, and each weight file's size, head and tail (fast on 100 GB models)."""
    digest = hashlib.sha256()
    root = Path(path)
    for f in sorted(p for p in root.iterdir() if p.is_file()):
        digest.update(f.name.encode())
        size = f.stat().st_size
        digest.update(str(size).encode())
        with f.open("rb") as fh:
            if f.suffix in (".json", ".txt", ".model", ".jinja") or size <= 2 * edge_bytes:
                digest.update(fh.read())
            else:
                digest.update(fh.read(edge_bytes))
                fh.seek(size - edge_bytes)
                digest.update(fh.read(edge_bytes))
    return digest.hexdigest()


def restore_rotary_buffers(model: torch.nn.Module) -> int:
    """ZeRO-3 builds a model with every floating buffer in the parameter dtype; RoPE's inverse frequencies, which
    transformers keeps in fp32, then lose precision in bf16 and positions drift (the policy would no longer compute
    what the reference and vLLM compute: 0.05 nats per sequence measured on the embedded model). Rebuild those
    buffers as transformers makes them; returns how many were rebuilt."""
    rebuilt = 0
    for module in model.modules():
        if "RotaryEmbedding" not in type(module).__name__ or not hasattr(module, "config"):
            continue
        fresh = type(module)(config=module.config)
        for name, buffer in fresh.named_buffers(recurse=False):
            current = getattr(module, name, None)
            if current is not None and current.dtype != buffer.dtype:
                module.register_buffer(name, buffer.to(current.device), persistent=False)
                rebuilt += 1
    return rebuilt


def parameter_count(path: str) -> int:
    """Parameters of a safetensors model directory, read from the files' headers (no weights are loaded)."""
    import json
    import struct

    total = 0
    for f in sorted(Path(path).glob("*.safetensors")):
        with f.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for size in entry["shape"]:
                    count *= size
                total += count
    return total
