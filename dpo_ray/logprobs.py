"""Sequence log-probabilities of completions from one causal-LM forward over a collated batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Varlen boundaries reach flash-attention through the model's keyword arguments (transformers' FlashAttentionKwargs).
MODEL_INPUTS = (
    "input_ids",
    "attention_mask",
    "position_ids",
    "cu_seq_lens_q",
    "cu_seq_lens_k",
    "max_length_q",
    "max_length_k",
)


@dataclass
class PairLogps:
    """Per-pair results of one forward over chosen and rejected sequences."""

    chosen_logps: torch.Tensor  # (B,) summed over completion tokens
    rejected_logps: torch.Tensor
    chosen_tokens: torch.Tensor  # (B,) completion tokens scored
    rejected_tokens: torch.Tensor
    chosen_logits_sum: torch.Tensor  # scalar: sum over chosen completion tokens of the vocab-mean logit
    rejected_logits_sum: torch.Tensor


def forward_pairs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> PairLogps:
    """Forward once and score each completion token from the position that predicts it (use_cache off: with a cache,
    transformers reads masks differently and packed sequences would attend across boundaries)."""
    logits = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, use_cache=False).logits
    flat = logits.reshape(-1, logits.shape[-1])[batch["predictor_index"]].float()
    targets = batch["input_ids"].reshape(-1)[batch["target_index"]]
    token_logps = flat.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(flat, dim=-1)
    n, seq = int(batch["num_sequences"]), batch["sequence_ids"]
    sums = torch.zeros(n, dtype=token_logps.dtype, device=token_logps.device).index_add(0, seq, token_logps)
    tokens = torch.zeros(n, dtype=token_logps.dtype, device=token_logps.device).index_add(
        0, seq, torch.ones_like(token_logps)
    )
    with torch.no_grad():
        mean_logits = flat.mean(-1)
        chosen = seq < n // 2
    return PairLogps(
        chosen_logps=sums[: n // 2],
        rejected_logps=sums[n // 2 :],
        chosen_tokens=tokens[: n // 2],
        rejected_tokens=tokens[n // 2 :],
        chosen_logits_sum=mean_logits[chosen].sum(),
        rejected_logits_sum=mean_logits[~chosen].sum(),
    )
