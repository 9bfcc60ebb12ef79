"""A CPU stand-in for the flash-attention kernel, so that the flash code path of collate + forward runs in CI through
transformers' own flash dispatch (`flash_attention_forward` -> `_flash_attention_forward`: unpadding a padding mask,
varlen boundaries as given, packed sequences found from position ids in a one-row batch). Only the kernel is stood
in: `flash_attn_varlen_func`'s and `flash_attn_func`'s contracts in plain torch, each query segment of the flattened
tokens attending its key segment, the causal mask aligned to the segment's end (flash-attention >= 2.1,
"bottom-right")."""

from __future__ import annotations

import torch

NAME = "varlen_stand_in"  # no "flash" in it: transformers would look for a flash kernel by that name


def segments(cu_seqlens: torch.Tensor, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's varlen segment and its offset in it."""
    starts = torch.zeros(tokens, dtype=torch.long)
    starts[cu_seqlens[1:-1].long()] = 1
    segment = starts.cumsum(0)
    return segment, torch.arange(tokens) - cu_seqlens.long()[segment]


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    deterministic=False,
):
    """q (queries, heads, dim); k, v (keys, kv_heads, dim); out (queries, heads, dim)."""
    assert causal and dropout_p == 0.0 and tuple(window_size) == (-1, -1) and not softcap
    segment_q, offset_q = segments(cu_seqlens_q, q.shape[0])
    segment_k, offset_k = segments(cu_seqlens_k, k.shape[0])
    assert int(cu_seqlens_q.diff().max()) <= max_seqlen_q and int(cu_seqlens_k.diff().max()) <= max_seqlen_k
    shift = (cu_seqlens_k.diff() - cu_seqlens_q.diff()).long()[segment_q]
    allowed = (segment_q[:, None] == segment_k[None, :]) & (offset_k[None, :] <= (offset_q + shift)[:, None])
    groups = q.shape[1] // k.shape[1]
    q, k, v = (x.transpose(0, 1)[None] for x in (q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed[None, None], scale=softmax_scale)
    return out[0].transpose(0, 1)


def flash_attn_func(
    q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, deterministic=False
):
    """q (rows, length, heads, dim): each row one sequence, as varlen segments of equal length."""
    rows, length_q, length_k = q.shape[0], q.shape[1], k.shape[1]
    cu_q, cu_k = (torch.arange(rows + 1, dtype=torch.int32) * n for n in (length_q, length_k))
    flat = (x.reshape(-1, *x.shape[2:]) for x in (q, k, v))
    out = flash_attn_varlen_func(
        *flat, cu_q, cu_k, length_q, length_k, dropout_p, softmax_scale, causal, window_size, softcap
    )
    return out.reshape(q.shape)


def register() -> str:
    """transformers' flash attention under NAME, its kernel loaded as this stand-in (transformers keeps the loaded
    kernel in module globals and loads again only for another implementation name)."""
    import transformers.modeling_flash_attention_utils as flash_utils
    from transformers import AttentionInterface
    from transformers.integrations.flash_attention import flash_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(NAME, flash_attention_forward)
    AttentionMaskInterface.register(NAME, flash_attention_mask)
    flash_utils._loaded_implementation = NAME
    flash_utils._flash_fn, flash_utils._flash_varlen_fn = flash_attn_func, flash_attn_varlen_func
    flash_utils._flash_with_kvcache_fn = None
    flash_utils._pad_fn, flash_utils._unpad_fn = flash_utils._pad_input, flash_utils._unpad_input
    flash_utils._process_flash_kwargs_fn = flash_utils._lazy_define_process_function(flash_attn_varlen_func)
    flash_utils._process_with_kvcache_kwargs_fn = dict
    return NAME
