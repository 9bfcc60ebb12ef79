"""dpo-ray's attention: the model's registered attention function (sdpa, flash-attention), wrapped so that a batch can
ask two things of it through the model's keyword arguments: a sequence-parallel group (each rank's shard of the
positions traded for a share of the heads around the call: sequence_parallel) and prefix-shared key segments (keys and
values gathered for a varlen kernel: prefix_attention). In that order: the key index names positions of the whole
sequence, which a rank holds only after the trade."""

from __future__ import annotations

from .prefix_attention import gather
from .sequence_parallel import heads_to_ranks, sequence_to_ranks


def wrap(inner):
    """An attention function doing what the batch asks around `inner`, and only `inner` when it asks nothing."""

    def attention(
        module,
        query,
        key,
        value,
        attention_mask,
        *args,
        shared_prefix_kv_index=None,
        sequence_parallel_group=None,
        **kwargs,
    ):
        group = sequence_parallel_group
        if group is not None:
            query, key, value = (heads_to_ranks(x, group) for x in (query, key, value))
        if shared_prefix_kv_index is not None:
            key, value = gather(key, shared_prefix_kv_index), gather(value, shared_prefix_kv_index)
        out, weights = inner(module, query, key, value, attention_mask, *args, **kwargs)
        return (sequence_to_ranks(out, group) if group is not None else out), weights

    attention.inner = inner
    return attention


def install(attention: str) -> None:
    """Wrap the registered attention function of that name, once per process (the model looks it up at each call)."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = ALL_ATTENTION_FUNCTIONS[attention]
    if not hasattr(current, "inner"):
        AttentionInterface.register(attention, wrap(current))
