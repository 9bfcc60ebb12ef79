"""Prompt-prefix sharing under a varlen kernel: the segments and key index by hand, and the kernels that cannot take
them. Its equality with padded sdpa through transformers' flash dispatch is in
test_logprobs.py (test_flash_attention_layouts_match_padded_sdpa_with_many_rows)."""

from __future__ import annotations

import logging

import torch

from dpo_ray.data.collate import make_layout
from dpo_ray.prefix_attention import KV_INDEX, boundaries


def test_each_response_is_a_query_segment_and_the_rejected_keys_repeat_the_prompt():
    # one row: pair 0 [prompt 0-1, chosen 2, rejected 3-4], pair 1 with no prompt [chosen 5, rejected 6], a pad (7)
    units = torch.tensor([[0, 0, 0, 0, 0, 1, 1, -8]])
    branches = torch.tensor([[0, 0, 1, 2, 2, 1, 2, 0]])
    got = boundaries(units, branches)
    assert got["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 7, 8] and got["cu_seq_lens_q"].dtype == torch.int32
    assert got[KV_INDEX].tolist() == [0, 1, 2, 0, 1, 3, 4, 5, 6, 7]
    assert got["cu_seq_lens_k"].tolist() == [0, 3, 7, 8, 9, 10] and got["cu_seq_lens_k"].dtype == torch.int32
    assert (got["max_length_q"], got["max_length_k"]) == (3, 4) and type(got["max_length_k"]) is int


def test_a_kernel_that_aligns_its_causal_mask_to_the_start_falls_back_to_packing(monkeypatch, caplog):
    import transformers.modeling_flash_attention_utils as flash_utils

    from .flash_stand_in import register

    name = register()
    assert make_layout("prefix_shared", 64, name).kind == "prefix_shared"
    monkeypatch.setattr(flash_utils, "flash_attn_supports_top_left_mask", lambda: True)
    with caplog.at_level(logging.WARNING):
        assert make_layout("prefix_shared", 64, name).kind == "packed"
    assert "flash-attention >= 2.1" in caplog.text
    assert make_layout("prefix_shared", 64, "sdpa").kind == "prefix_shared"  # a mask needs no segments
