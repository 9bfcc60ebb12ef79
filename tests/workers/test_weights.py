"""The weights an engine receives: LoRA merged exactly as peft merges, tied tensors under both names."""

from __future__ import annotations

import torch
from safetensors.torch import load

from dpo_ray.workers.weights import merge_lora_state, weights_bytes


def test_merged_lora_state_equals_peft_merge_and_unload(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_()  # peft starts B at zero: make the merge matter
    merged = merge_lora_state(model.state_dict(), 8 / 4)
    expected = model.merge_and_unload().state_dict()
    assert set(merged) == set(expected)
    for name, tensor in expected.items():
        assert torch.allclose(merged[name], tensor, atol=1e-6), name
    assert any(
        not torch.equal(merged[n], t)
        for n, t in AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict().items()
    )


def test_tied_tensors_are_stored_under_every_name(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    state = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    loaded = load(weights_bytes(state))
    assert set(loaded) == set(state)
    assert torch.equal(loaded["lm_head.weight"], state["model.embed_tokens.weight"])
