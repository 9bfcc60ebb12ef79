"""Sequence log-probabilities of completions from a causal LM forward."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch


@dataclass
class PairLogps:
    """Per-pair results of one concatenated chosen+rejected forward."""

    chosen_logps: torch.Tensor  # (B,) summed over completion tokens
    rejected_logps: torch.Tensor
    chosen_token_logps: torch.Tensor  # (B, L-1), zero outside the chosen completion
    chosen_tokens: torch.Tensor  # (B,) completion lengths
    rejected_tokens: torch.Tensor
    chosen_logits_sum: torch.Tensor  # scalar: sum over chosen completion tokens of the vocab-mean logit
    rejected_logits_sum: torch.Tensor


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Log-prob of each next token under logits, zero outside the completion; shape (N, L-1)."""
    labels = input_ids[:, 1:]
    mask = completion_mask[:, 1:].to(torch.bool)
    logits = logits[:, :-1].float()
    picked = torch.gather(logits, 2, labels.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, picked - torch.logsumexp(logits, dim=-1), torch.zeros_like(picked))


def forward_pairs(model: torch.nn.Module, batch: Dict[str, torch.Tensor]) -> PairLogps:
    """Run chosen and rejected rows in one forward (use_cache off: a cache changes how masks are read)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    per_token = token_logps(logits, batch["input_ids"], batch["completion_mask"])
    mask = batch["completion_mask"][:, 1:].to(per_token.dtype)
    sums, tokens = per_token.sum(-1), mask.sum(-1)
    with torch.no_grad():
        logits_sums = (logits[:, :-1].float().mean(-1) * mask).sum(-1)
    n = batch["input_ids"].shape[0] // 2
    return PairLogps(
        chosen_logps=sums[:n], rejected_logps=sums[n:], chosen_token_logps=per_token[:n],
        chosen_tokens=tokens[:n], rejected_tokens=tokens[n:],
        chosen_logits_sum=logits_sums[:n].sum(), rejected_logits_sum=logits_sums[n:].sum(),
    )
