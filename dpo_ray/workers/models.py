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
