"""Dropout zeroed as TRL's disable_dropout does, in both the places models keep it: modules and numbers."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from dpo_ray.workers.models import disable_dropout


def gpt2_with_dropout():
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)  # dropouts 0.1 by default
    return GPT2LMHeadModel(config)


def llama_with_attention_dropout():
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        attention_dropout=0.5,  # a number the attention layers read, not an nn.Dropout module
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("build", [gpt2_with_dropout, llama_with_attention_dropout])
def test_a_model_in_training_mode_computes_what_it_computes_in_eval_mode_once_dropout_is_off(build):
    torch.manual_seed(0)
    model = build()
    ids = torch.randint(0, 64, (2, 16))
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        model.train()
        assert not torch.allclose(model(input_ids=ids).logits, expected)  # dropout on: training differs
        disable_dropout(model)
        assert torch.equal(model(input_ids=ids).logits, expected)
    assert all(v == 0.0 for k, v in vars(model.config).items() if "dropout" in k and isinstance(v, float))
