"""The tensors an engine receives: LoRA merged exactly as peft merges, the adapter as peft saves it, tied tensors under
both names, and parameters gathered a bucket's worth at a time."""

from __future__ import annotations

import contextlib

import pytest
import torch

from dpo_ray.workers.weights import WeightUnit, adapter_units, full_units, gathered_tensors, unit_chunks

from ..conftest import tiny_config


def lora_model(tiny_model_dir, **variant):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM", **variant),
    )
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name or "lora_magnitude" in name or "modules_to_save" in name:
            p.data.normal_()  # peft starts B at zero and the rest at the base's: make the merge matter
    return model


def as_dict(units) -> dict[str, torch.Tensor]:
    tensors = gathered_tensors(units, 1 << 20, lambda params: contextlib.nullcontext())
    return {spec.name: tensor for spec, tensor in zip([s for u in units for s in u.specs], tensors, strict=True)}


def test_merged_units_equal_peft_merge_and_unload(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = lora_model(tiny_model_dir)
    merged = as_dict(full_units(model, 8 / 4))
    expected = model.merge_and_unload().state_dict()
    assert set(merged) == set(expected)
    for name, tensor in expected.items():
        assert torch.allclose(merged[name], tensor, atol=1e-6), name
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(merged[n], t) for n, t in base.items())


@pytest.mark.parametrize(
    "variant",
    [{"use_rslora": True}, {"use_dora": True}, {"modules_to_save": ["lm_head"]}, {"bias": "lora_only"}],
    ids=["rslora", "dora", "modules_to_save", "bias"],
)
def test_merged_units_equal_peft_merge_and_unload_for_every_lora_variant(tiny_model_dir, variant):
    """DoRA's magnitudes, rsLoRA's alpha / sqrt(r), a module trained in full and trained biases: the weights an engine
    gets are peft's merged model's."""
    from types import SimpleNamespace

    from dpo_ray.workers.weights import lora_scaling

    model = lora_model(tiny_model_dir, **variant)
    for name, p in model.named_parameters():
        if name.endswith(".bias") and p.requires_grad:
            p.data.normal_()
    scaling = lora_scaling(SimpleNamespace(alpha=8, r=4, use_rslora=variant.get("use_rslora", False)))
    merged = as_dict(full_units(model, scaling))
    expected = model.merge_and_unload().state_dict()
    assert set(merged) == set(expected)
    for name, tensor in expected.items():
        assert torch.allclose(merged[name], tensor, atol=1e-5), name


def test_adapter_units_are_the_tensors_peft_saves(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    model = lora_model(tiny_model_dir)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    sent = as_dict(adapter_units(model, torch.float32))
    assert set(sent) == set(saved) and len(saved) > 0
    assert all(torch.equal(sent[k], saved[k]) for k in saved)
    assert sum(t.numel() for t in sent.values()) < 0.2 * sum(p.numel() for p in model.parameters())
    in_bf16 = as_dict(adapter_units(model, torch.bfloat16))  # a bf16 model's engine serves its adapter in bf16
    assert all(in_bf16[k].dtype == torch.bfloat16 and torch.equal(in_bf16[k], saved[k].bfloat16()) for k in saved)


def test_tied_tensors_come_under_every_name(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    sent = as_dict(full_units(model))
    assert set(sent) == set(state)
    assert torch.equal(sent["lm_head.weight"], state["model.embed_tokens.weight"])


def test_a_gather_holds_about_one_bucket_and_every_parameter_is_gathered_once_per_chunk(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    units = full_units(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    bucket = 4 * max(u.nbytes for u in units) // 3
    chunks = list(unit_chunks(units, bucket))
    assert [u for c in chunks for u in c] == units and len(chunks) > 2
    assert all(sum(u.nbytes for u in c) <= bucket or len(c) == 1 for c in chunks)
    gathered = []

    @contextlib.contextmanager
    def recording(params):
        gathered.append(len(params))
        yield

    assert len(list(gathered_tensors(units, bucket, recording))) == len(units)
    assert len(gathered) == len(chunks)


def test_a_rank_that_sends_nothing_takes_part_in_every_gather_and_makes_no_tensor(tiny_model_dir):
    """Ranks other than 0 only join ZeRO-3's gathers: no LoRA merge, no tensor, the same gathers as the sender."""
    model = lora_model(tiny_model_dir)
    units = full_units(model, 2.0)
    made = []
    units = [WeightUnit(u.specs, u.params, lambda make=u.make: made.append(1) or make()) for u in units]
    sender, bystander = [], []

    def recording(log):
        @contextlib.contextmanager
        def gather(params):
            log.append([id(p) for p in params])
            yield

        return gather

    assert all(t is not None for t in gathered_tensors(units, 1 << 16, recording(sender)))
    assert len(made) == len(units)
    assert list(gathered_tensors(units, 1 << 16, recording(bystander), make=False)) == [None] * len(units)
    assert len(made) == len(units) and bystander == sender


def test_fused_experts_go_out_as_the_checkpoint_that_save_pretrained_writes(tmp_path):
    """A Mixtral holds each layer's experts fused (mlp.experts.gate_up_proj, down_proj); named for the engines, the
    units give exactly the tensors and names transformers writes to disk, which vLLM's loaders read (the fused names
    fail there: 'no module or parameter named layers.0.mlp'). The reference, an HF model itself, takes them as held."""
    from safetensors.torch import load_file
    from transformers import MixtralConfig, MixtralForCausalLM

    config = tiny_config(
        MixtralConfig, vocab_size=300, intermediate_size=48, num_local_experts=4, num_experts_per_tok=2
    )
    torch.manual_seed(0)
    model = MixtralForCausalLM(config)
    model.save_pretrained(tmp_path, safe_serialization=True)
    saved = load_file(str(tmp_path / "model.safetensors"))
    sent = as_dict(full_units(model, checkpoint_names=True))
    assert sent.keys() == saved.keys() and all(torch.equal(sent[k], saved[k]) for k in saved)
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in sent
    held = as_dict(full_units(model))
    assert "model.layers.1.mlp.experts.gate_up_proj" in held and held.keys() == dict(model.named_parameters()).keys()
