"""Sequence log-probs: the padded batch against a per-example computation, and packed rows against padded rows."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from dpo_ray.data.batches import step_scale
from dpo_ray.data.collate import BatchLayout, collate_pairs, unit_length
from dpo_ray.data.tokenize import TokenizedPair
from dpo_ray.logprobs import forward_pairs, install_scoring_head
from dpo_ray.objective import micro_batch_objective
from dpo_ray.prefix_attention import KV_INDEX
from dpo_ray.schema import AlgoConfig

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


def per_token_logps(model, prompt, completion) -> list[float]:
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return [logp[j - 1, ids[0, j]].item() for j in range(max(len(prompt), 1), ids.shape[1])]


@pytest.mark.parametrize("kind", ["padded", "packed", "prefix_shared"])
def test_ld_dpo_weighs_the_longer_responses_tail_as_trl_does_in_every_layout(tiny_model_dir, kind):
    """TRL's LD-DPO, transcribed: in each pair both responses count their first min(|c|, |r|) tokens fully and the
    rest ld_alpha times."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    pairs = make_pairs(7, seed=5) + [TokenizedPair((), (7, 8, 9), (10, 11))]
    with torch.no_grad():
        out = forward_pairs(model, collate_pairs(pairs, 0, BatchLayout(kind, pack_length=40)), ld_alpha=0.3)
    for i, p in enumerate(pairs):
        chosen = per_token_logps(model, p.prompt_ids, p.chosen_ids)
        rejected = per_token_logps(model, p.prompt_ids, p.rejected_ids)
        shared = min(len(chosen), len(rejected))
        for got, tokens in ((out.chosen_logps[i], chosen), (out.rejected_logps[i], rejected)):
            assert got.item() == pytest.approx(sum(tokens[:shared]) + 0.3 * sum(tokens[shared:]), abs=1e-4)
    assert any(len(p.chosen_ids) != len(p.rejected_ids) for p in pairs)  # some tails are weighed


def grads_and_loss(model, pairs, layout):
    model.zero_grad()
    out = forward_pairs(model, collate_pairs(pairs, 0, layout))
    ref = (out.chosen_logps.detach() + 1.0, out.rejected_logps.detach() - 0.5)
    loss, *_ = micro_batch_objective(out, *ref, AlgoConfig(rpo_alpha=0.3), step_scale(pairs))
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
    rows every sequence still attends only to itself; prefix-shared rows carry key segments that repeat the prompt
    for the rejected response, so each prompt is computed once and no rejected token sees its chosen response."""
    from dpo_ray.data.collate import make_layout

    from .flash_stand_in import register

    name = register()
    flash = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=name)
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    pairs = make_pairs(9, seed=4)
    pairs += [TokenizedPair((), (7, 8, 9), (10, 11)), TokenizedPair(tuple(range(5, 45)), (50, 51), (52,))]
    layout = make_layout(kind, 40, name)
    assert layout.kind == kind
    batch = collate_pairs(pairs, 0, layout)
    if kind != "padded":  # the kernel reads the longest sequence on the host: an int, no device synchronisation
        assert type(batch["max_length_q"]) is int and batch["max_length_q"] == int(batch["cu_seq_lens_q"].diff().max())
    padded, loss_padded, grad_padded = grads_and_loss(sdpa, pairs, BatchLayout())
    got, loss_got, grad_got = grads_and_loss(flash, pairs, layout)
    assert torch.allclose(got.chosen_logps, padded.chosen_logps, atol=1e-5)
    assert torch.allclose(got.rejected_logps, padded.rejected_logps, atol=1e-5)
    assert loss_got == pytest.approx(loss_padded, abs=1e-6) and torch.allclose(grad_got, grad_padded, atol=1e-6)
    if kind == "padded":
        return
    assert batch["input_ids"].shape[0] > 1 and "attention_mask" not in batch and set(VARLEN_KEYS) <= set(batch)
    if kind == "prefix_shared":  # each prompt's positions once; its keys and values read again for the rejected
        tokens = sum(p.prompt_len + p.chosen_len + p.rejected_len for p in pairs)
        pads = batch["input_ids"].numel() - tokens
        assert int(batch["cu_seq_lens_q"][-1]) == tokens + pads
        assert len(batch["cu_seq_lens_q"]) == len(batch["cu_seq_lens_k"]) == 1 + 2 * len(pairs) + pads
        assert len(batch[KV_INDEX]) == tokens + pads + sum(p.prompt_len for p in pairs)
    # The old path: position ids alone. transformers finds packed sequences only in a one-row batch, so each row runs
    # dense-causal and later pairs attend to earlier ones in their row.
    with torch.no_grad():
        old = forward_pairs(flash, {k: v for k, v in batch.items() if k not in (*VARLEN_KEYS, KV_INDEX)})
    assert (old.chosen_logps - padded.chosen_logps.detach()).abs().max() > 0.1


@pytest.mark.parametrize("scale, softcap, bias", [(1.0, None, False), (0.5, 30.0, True)])
def test_the_chunked_fp32_head_gives_the_log_probs_and_gradients_of_a_float64_softmax(scale, softcap, bias):
    """TokenLogProbs over vocabulary chunks of 7 rows (the last one short) against autograd through full float64
    logits, with a logit scale (Cohere, Granite), a soft cap (Gemma) and a bias; and its metrics (mean logit,
    entropy, top-1) against the same float64 logits, half of the targets being the top-1 token."""
    from dpo_ray.logprobs import TokenLogProbs

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(11, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(40, generator=gen, dtype=torch.float64, requires_grad=True) if bias else None
    logits = (hidden @ weight.T + (b if bias else 0)) * scale
    logits = softcap * torch.tanh(logits / softcap) if softcap else logits
    targets = torch.randint(0, 40, (11,), generator=gen)
    targets[::2] = logits.argmax(-1)[::2]
    got, mean, entropy, top1, log_sum_sq = TokenLogProbs.apply(hidden, weight, b, targets, 7, scale, softcap)
    expected = torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)
    assert torch.allclose(got.double(), expected, atol=1e-5) and torch.allclose(
        mean.double(), logits.mean(-1), atol=1e-5
    )
    exact_entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    assert torch.allclose(entropy.double(), exact_entropy, atol=1e-5)
    exact_sum_sq = torch.logsumexp(2 * torch.log_softmax(logits, -1), -1)  # WPO's log sum_v p_v^2
    assert torch.allclose(log_sum_sq.double(), exact_sum_sq, atol=1e-5)
    assert top1.tolist() == (logits.argmax(-1) == targets).double().tolist() and 6 <= top1.sum() < 11
    upstream = torch.randn(11, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(got, [hidden, weight] + ([b] if bias else []), upstream)
    reference = torch.autograd.grad(expected, [hidden, weight] + ([b] if bias else []), upstream)
    assert all(torch.allclose(g, r, atol=1e-4) for g, r in zip(grads, reference))


def test_in_bf16_the_head_multiplies_bf16_operands_into_fp32_logits():
    """bf16 hidden states and output layer, as a bf16 run has them: the head's matmuls take the bf16 operands as they
    are (fp32 results; on CUDA tensor cores), so its log-probs match float64 arithmetic on the same bf16 values to fp32
    rounding (1e-5), and its gradients to bf16's: the logit gradients are rounded to bf16 for the backward's matmuls
    and the results to the parameters' bf16, each a relative error of at most 2**-8, so within 2**-7 in norm."""
    from dpo_ray.logprobs import TokenLogProbs, wide_mm

    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(23, 64, generator=gen).bfloat16()
    weight = (0.5 * torch.randn(100, 64, generator=gen)).bfloat16()
    targets = torch.randint(0, 100, (23,), generator=gen)
    assert wide_mm(hidden, weight.T).dtype == torch.float32
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    got, *_ = TokenLogProbs.apply(h, w, None, targets, 7, 1.0, None)
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    expected = torch.log_softmax(h64 @ w64.T, -1).gather(1, targets[:, None]).squeeze(1)
    assert (got.double() - expected).abs().max() < 1e-5
    upstream = torch.randn(23, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(got, [h, w], upstream.float())
    exact = torch.autograd.grad(expected, [h64, w64], upstream)
    assert all(g.dtype == torch.bfloat16 for g in grads)
    errors = [float((g.double() - e).norm() / e.norm()) for g, e in zip(grads, exact)]
    assert max(errors) < 2**-7, errors


def test_in_bf16_the_fp32_head_removes_the_rounding_of_bf16_logits(tiny_model_dir):
    """On the same bf16 hidden states, log-probs against an exact (float64) output layer: the fp32 head matches it to
    fp32 rounding, the old path (bf16 logits, upcast after) is off by bf16's. Against a whole fp32 forward both carry
    the backbone's bf16 error as well, which the head cannot remove (SmolLM2-135M: 0.1-0.5 nats per sequence, both)."""
    from dpo_ray.logprobs import MODEL_INPUTS

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8)  # logits of a real model's size (tens): bf16 rounds them by ~0.1
    batch = collate_pairs(make_pairs(6, seed=2), 0, BatchLayout("prefix_shared", 256), torch.bfloat16)
    with torch.no_grad():
        hidden = model.model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, use_cache=False).last_hidden_state
        scored = hidden.reshape(-1, hidden.shape[-1])[batch["predictor_index"]]
        targets = batch["input_ids"].reshape(-1)[batch["target_index"]]
        exact_logits = scored.double() @ model.lm_head.weight.double().T
        exact = torch.log_softmax(exact_logits, -1).gather(1, targets[:, None]).squeeze(1)
        old_logits = (scored @ model.lm_head.weight.T).float()
        old = torch.log_softmax(old_logits, -1).gather(1, targets[:, None]).squeeze(1)
        new, *_ = install_scoring_head(model)(scored, targets)
    assert (new.double() - exact).abs().max() < 1e-4 < 1e-2 < (old.double() - exact).abs().max()


def test_chunked_log_probs_cut_the_peak_memory_of_a_49k_vocabulary(tmp_path):
    """Scoring and back-propagating 1920 tokens with a 49152-token vocabulary (SmolLM2's), each in a fresh process:
    the full-vocabulary logits the model returns against the ScoringHead with a 16 MiB chunk budget."""
    script = Path(__file__).parent / "logprob_memory.py"

    def peak(*mode: str) -> float:
        done = subprocess.run([sys.executable, str(script), *mode], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return float(done.stdout.split()[-1])

    old, chunked = peak("old"), peak("chunked", "16")
    print(f"peak extra RSS: full-vocabulary logits {old:.0f} MiB, chunked {chunked:.0f} MiB")
    assert chunked < old / 8
