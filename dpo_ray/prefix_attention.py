"""Prompt-prefix sharing under a varlen attention kernel (flash-attention), which takes segment boundaries, not a mask.

A pair is laid out once as [prompt, chosen, rejected] (data.layout=prefix_shared). The queries keep that layout and
form two segments per pair: prompt + chosen, and rejected. The keys and values are gathered into two segments per
pair too: prompt + chosen, and prompt + rejected, so the prompt's keys and values are read twice but its queries,
projections and MLP are computed once. With the causal mask aligned to the end of each segment (flash-attention
>= 2.1: "bottom-right"), a rejected token at offset j of its segment sees the prompt and rejected tokens 0..j, which
is exactly what the prefix-shared mask allows. The gather runs in the attention call, so its backward adds the two
reads of each prompt key back together."""

from __future__ import annotations

import torch

KV_INDEX = "shared_prefix_kv_index"  # the model input naming, for each key segment's token, its token in the batch


def gather(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(rows, heads, width, dim) keys or values -> (1, heads, len(index), dim): the batch's tokens flattened row after
    row (as the varlen kernel reads them), then taken in key-segment order."""
    rows, heads, width, dim = states.shape
    return states.transpose(0, 1).reshape(heads, rows * width, dim).index_select(1, index).unsqueeze(0)


def aligns_causal_to_segment_end() -> bool:
    """Whether the installed flash kernel aligns its causal mask to the end of a key segment longer than its query
    segment (flash-attention >= 2.1, 3 and 4 do; transformers reports the older top-left alignment)."""
    from transformers.modeling_flash_attention_utils import flash_attn_supports_top_left_mask

    return not flash_attn_supports_top_left_mask()


def boundaries(unit_ids: torch.Tensor, branch_ids: torch.Tensor) -> dict[str, torch.Tensor | int]:
    """The varlen inputs of a prefix-shared batch from each token's unit (pair; pads: a negative id of their own) and
    branch (0 prompt, 1 chosen, 2 rejected): query segments over the rows flattened into one stream, and the key
    index and segments gathered from it. Maxima are plain ints (the kernel takes them on the host)."""
    units, branches = unit_ids.reshape(-1).tolist(), branch_ids.reshape(-1).tolist()
    prompts: dict[int, range] = {}  # each unit's prompt tokens in the stream
    query_lengths, key_lengths, key_index = [], [], []
    start = 0
    for end in range(1, len(units) + 1):
        rejected = branches[start] == 2
        if end < len(units) and units[end] == units[start] and (branches[end] == 2) == rejected:
            continue
        keys = range(start, end)
        if rejected:
            keys = [*prompts.get(units[start], ()), *keys]
        else:
            prompts[units[start]] = range(start, start + sum(1 for b in branches[start:end] if b == 0))
        query_lengths.append(end - start)
        key_lengths.append(len(keys))
        key_index.extend(keys)
        start = end
    cumulative = lambda lengths: torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)  # noqa: E731
    return {
        "cu_seq_lens_q": cumulative(query_lengths),
        "cu_seq_lens_k": cumulative(key_lengths),
        "max_length_q": max(query_lengths),
        "max_length_k": max(key_lengths),
        KV_INDEX: torch.tensor(key_index, dtype=torch.long),
    }
