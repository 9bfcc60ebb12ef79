"""Batched, padded sequence log-probs against a per-example computation."""
import math

import torch
from transformers import AutoModelForCausalLM

from dpo_ray.data.collate import collate_pairs
from dpo_ray.logprobs import forward_pairs

from .conftest import make_pairs


def per_example_logp(model, prompt, completion):
    """Sum of log p(token | prefix) over completion tokens, one unpadded sequence, explicit softmax."""
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    total = 0.0
    for j in range(len(prompt), ids.shape[1]):
        probs = torch.softmax(logits[j - 1], dim=-1)
        total += math.log(probs[ids[0, j]].item())
    return total


def test_padded_batch_matches_per_example(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    pairs = make_pairs(6, seed=1)
    with torch.no_grad():
        out = forward_pairs(model, collate_pairs(pairs, pad_id=0))
    for i, p in enumerate(pairs):
        assert abs(out.chosen_logps[i].item() - per_example_logp(model, p.prompt_ids, p.chosen_ids)) < 1e-4
        assert abs(out.rejected_logps[i].item() - per_example_logp(model, p.prompt_ids, p.rejected_ids)) < 1e-4
        assert out.chosen_tokens[i].item() == len(p.chosen_ids)
    assert torch.allclose(out.chosen_token_logps.sum(-1), out.chosen_logps)
