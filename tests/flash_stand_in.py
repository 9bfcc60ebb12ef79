"""A CPU stand-in for flash-attention, registered with transformers so that the flash code path of collate + forward
runs in CI. It computes exactly what transformers' flash dispatch (`_flash_attention_forward`) asks of the kernel:
a padding mask unpads each row; given varlen boundaries (cu_seq_lens) it attends within each segment of the rows
flattened into one stream; given only position ids it finds packed sequences only in a one-row batch (transformers'
`_is_packed_sequence`); otherwise each row is one causal sequence."""

from __future__ import annotations

import torch

NAME = "varlen_stand_in"  # no "flash" in it: transformers would look for a flash kernel by that name


def attention(
    module,
    query,
    key,
    value,
    attention_mask,
    scaling=None,
    dropout=0.0,
    position_ids=None,
    cu_seq_lens_q=None,
    **kwargs,
):
    from transformers.integrations.sdpa_attention import repeat_kv
    from transformers.modeling_flash_attention_utils import _is_packed_sequence

    rows, heads, length, _ = query.shape
    key, value = repeat_kv(key, heads // key.shape[1]), repeat_kv(value, heads // value.shape[1])
    tokens = rows * length
    if cu_seq_lens_q is not None:
        starts = torch.zeros(tokens, dtype=torch.long)
        starts[cu_seq_lens_q[:-1].long()] = 1
        segment = starts.cumsum(0)
    elif attention_mask is None and _is_packed_sequence(position_ids, rows):
        segment = (position_ids.reshape(-1) == 0).long().cumsum(0)
    else:
        segment = torch.arange(rows).repeat_interleave(length)
    allowed = (segment[:, None] == segment[None, :]) & torch.ones(tokens, tokens, dtype=torch.bool).tril()
    if attention_mask is not None:  # flash unpads: pad keys are never attended to
        allowed &= attention_mask.reshape(-1).bool()[None, :]
    flat = [x.transpose(0, 1).reshape(1, heads, tokens, -1) for x in (query, key, value)]
    out = torch.nn.functional.scaled_dot_product_attention(*flat, attn_mask=allowed[None, None], scale=scaling)
    return out[0].transpose(0, 1).reshape(rows, length, heads, -1), None


def register() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, flash_attention_mask)
    return NAME
