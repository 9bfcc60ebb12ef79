"""Sequence log-probs: the padded batch against a per-example computation, and packed rows against padded rows."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from dpo_ray.config import AlgoConfig
from dpo_ray.data.batches import step_scale
from dpo_ray.data.collate import BatchLayout, collate_pairs, unit_length
from dpo_ray.data.tokenize import TokenizedPair
from dpo_ray.logprobs import forward_pairs
from dpo_ray.objective import micro_batch_objective

from .conftest import make_pairs


def per_example_logp(model, prompt, completion):
    """Sum of log p(token | prefix) over completion tokens, one unpadded sequence, explicit softmax."""
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    total = 0.0
    for j in range(max(len(prompt), 1), ids.shape[1]):
        probs = torch.softmax(logits[j - 1], dim=-1)
        total += math.log(probs[ids[0, j]].item())
    return total


def test_padded_batch_matches_per_example(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    pairs = make_pairs(6, seed=1)
    with torch.no_grad():
        out = forward_pairs(model, collate_pairs(pairs, 0))
    for i, p in enumerate(pairs):
        assert abs(out.chosen_logps[i].item() - per_example_logp(model, p.prompt_ids, p.chosen_ids)) < 1e-4
        assert abs(out.rejected_logps[i].item() - per_example_logp(model, p.prompt_ids, p.rejected_ids)) < 1e-4
        assert out.chosen_tokens[i].item() == len(p.chosen_ids)


def grads_and_loss(model, pairs, layout):
    model.zero_grad()
    out = forward_pairs(model, collate_pairs(pairs, 0, layout))
    ref = (out.chosen_logps.detach() + 1.0, out.rejected_logps.detach() - 0.5)
    loss, _ = micro_batch_objective(out, *ref, AlgoConfig(rpo_alpha=0.3), step_scale(pairs))
    loss.backward()
    return out, loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("kind", ["packed", "prefix_shared"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_rows_match_padded_rows(tiny_model_dir, attention, kind):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attention)
    assert model.config.use_cache  # the trap: a cache-enabled model must still pack correctly
    pairs = make_pairs(9, seed=3)
    # a pair with an empty prompt (its first token has no predictor) and one pair longer than a row
    pairs += [TokenizedPair((), (7, 8, 9), (10, 11)), TokenizedPair(tuple(range(5, 45)), (50, 51), (52,))]
    layout = BatchLayout(kind, pack_length=40, attention=attention)
    assert unit_length(pairs[-1], layout) > layout.pack_length
    padded, loss_padded, grad_padded = grads_and_loss(model, pairs, BatchLayout(attention=attention))
    packed, loss_packed, grad_packed = grads_and_loss(model, pairs, layout)
    packed_ids = collate_pairs(pairs, 0, layout)["input_ids"]
    assert 1 < packed_ids.shape[0] < len(pairs) and (packed_ids == 0).any()  # several rows, with pad tails
    assert torch.allclose(packed.chosen_logps, padded.chosen_logps, atol=1e-5)
    assert torch.allclose(packed.rejected_logps, padded.rejected_logps, atol=1e-5)
    assert torch.equal(packed.chosen_tokens, padded.chosen_tokens)
    assert loss_packed == pytest.approx(loss_padded, abs=1e-6)
    assert torch.allclose(grad_packed, grad_padded, atol=1e-6)


@pytest.mark.parametrize("kind", ["packed", "prefix_shared"])
def test_a_row_filled_exactly_matches_padded(tiny_model_dir, kind):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    pairs = [TokenizedPair((5, 6, 7), (8, 9), (10,)), TokenizedPair((11, 12), (13,), (14, 15, 16))]
    layout = BatchLayout(kind)
    exact = BatchLayout(kind, pack_length=sum(unit_length(p, layout) for p in pairs))
    batch = collate_pairs(pairs, 0, exact)
    assert batch["input_ids"].shape == (1, exact.pack_length)
    with torch.no_grad():
        a, b = forward_pairs(model, batch), forward_pairs(model, collate_pairs(pairs, 0))
    assert torch.allclose(a.chosen_logps, b.chosen_logps, atol=1e-5) and torch.allclose(
        a.rejected_logps, b.rejected_logps, atol=1e-5
    )


VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


@pytest.mark.parametrize("kind", ["padded", "packed", "prefix_shared"])
def test_flash_attention_layouts_match_padded_sdpa_with_many_rows(tiny_model_dir, kind):
    """Through a CPU stand-in with flash-attention's semantics: packed rows carry varlen boundaries, so with several
    rows every sequence still attends only to itself (prefix sharing falls back to packing: it needs a mask)."""
    from dpo_ray.data.collate import make_layout

    from .flash_stand_in import register

    name = register()
    flash = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=name)
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    pairs = make_pairs(9, seed=4)
    layout = make_layout(kind, 40, name)
    assert layout.kind == ("padded" if kind == "padded" else "packed")
    batch = collate_pairs(pairs, 0, layout)
    padded, loss_padded, grad_padded = grads_and_loss(sdpa, pairs, BatchLayout())
    got, loss_got, grad_got = grads_and_loss(flash, pairs, layout)
    assert torch.allclose(got.chosen_logps, padded.chosen_logps, atol=1e-5)
    assert torch.allclose(got.rejected_logps, padded.rejected_logps, atol=1e-5)
    assert loss_got == pytest.approx(loss_padded, abs=1e-6) and torch.allclose(grad_got, grad_padded, atol=1e-6)
    if kind == "padded":
        return
    assert batch["input_ids"].shape[0] > 1 and "attention_mask" not in batch and set(VARLEN_KEYS) <= set(batch)
    # The old path: position ids alone. transformers finds packed sequences only in a one-row batch, so each row runs
    # dense-causal and later pairs attend to earlier ones in their row.
    with torch.no_grad():
        old = forward_pairs(flash, {k: v for k, v in batch.items() if k not in VARLEN_KEYS})
    assert (old.chosen_logps - padded.chosen_logps.detach()).abs().max() > 0.1
