"""Sequence log-probabilities of completions from one causal-LM forward over a collated batch.

The output layer is replaced by a ScoringHead: the model's own forward stops at the final hidden states, only the
scored positions go through the vocabulary projection, and that projection yields fp32 logits whose log-softmax runs
in fp32, over chunks of the vocabulary. In bf16 this removes the rounding of bf16 logits (1e-2 to 1e-1 nats per token)
and never holds tokens x vocab logits at once; the projection's matmuls take the bf16 operands as they are (tensor
cores on GPU, fp32 accumulation and result: see wide_mm)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import sequence_parallel
from .attention import install
from .prefix_attention import KV_INDEX

# Varlen boundaries reach flash-attention through the model's keyword arguments (transformers' FlashAttentionKwargs).
MODEL_INPUTS = (
    "input_ids",
    "attention_mask",
    "position_ids",
    "cu_seq_lens_q",
    "cu_seq_lens_k",
    "max_length_q",
    "max_length_k",
    KV_INDEX,
)
DEFAULT_CHUNK_BYTES = 256 << 20
HALF = (torch.bfloat16, torch.float16)


def wide_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b as an fp32 result. Half-precision operands stay half on CUDA (tensor cores, fp32 accumulation and output:
    torch.mm's out_dtype, CUDA only); elsewhere they are cast up, which computes the same numbers up to summation order
    (the product of two bf16 or fp16 values is exact in fp32), so the CPU tests check the GPU's arithmetic."""
    if a.is_cuda and a.dtype in HALF and b.dtype == a.dtype:
        return torch.mm(a, b, out_dtype=torch.float32)
    return a.float() @ b.float()


@dataclass
class PairLogps:
    """Per-pair results of one forward over chosen and rejected sequences."""

    chosen_logps: torch.Tensor  # (B,) summed over completion tokens
    rejected_logps: torch.Tensor
    chosen_tokens: torch.Tensor  # (B,) completion tokens scored
    rejected_tokens: torch.Tensor
    chosen_logits_sum: torch.Tensor  # scalar: sum over chosen completion tokens of the vocab-mean logit
    rejected_logits_sum: torch.Tensor
    entropy_sum: torch.Tensor  # scalar: sum over all completion tokens of the policy's entropy (nats)
    chosen_top1_sum: torch.Tensor  # scalar: chosen completion tokens that are the policy's top-1 prediction
    chosen_log_weight: torch.Tensor  # (pairs,): log of WPO's weight of each chosen response (no gradient)
    rejected_log_weight: torch.Tensor


def _transform(raw: torch.Tensor, scale: float, softcap: float | None) -> tuple[torch.Tensor, torch.Tensor | float]:
    """The model's own logit post-processing (Cohere's scale, Granite's divisor, Gemma's soft cap), its slope."""
    logits = raw * scale if scale != 1.0 else raw
    if softcap is None:
        return logits, scale
    capped = torch.tanh(logits / softcap)
    return capped * softcap, scale * (1 - capped * capped)


class TokenLogProbs(torch.autograd.Function):
    """log p(target) of each row of hidden under the output layer (weight, bias), from fp32 logits, a vocabulary
    chunk at a time (forward and backward both; the backward rounds the logit gradients to a half-precision weight's
    dtype for its matmuls, as any bf16 trainer does), plus four numbers of each row (no gradient): its mean logit, the
    entropy of its distribution, whether the target is the top-1 token, and log sum_v p_v^2 (WPO's weights). The
    entropy, logz - E_p[logit], and sum_v p_v^2 are accumulated over the chunks as sums of exp(logit - m),
    exp(logit - m) * logit and exp(logit - m)^2, rescaled whenever the running maximum m grows."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows: int, scale: float, softcap: float | None):
        rows = torch.arange(len(targets), device=hidden.device)
        top = torch.full((len(targets),), -math.inf, dtype=torch.float32, device=hidden.device)
        mass, weighted = torch.zeros_like(top), torch.zeros_like(top)  # sums of exp(l - top) and exp(l - top) * l
        squared = torch.zeros_like(top)  # sum of exp(l - top)^2
        target_logit = torch.zeros_like(top)
        logit_sum = torch.zeros_like(top)
        for lo in range(0, weight.shape[0], chunk_rows):
            hi = min(lo + chunk_rows, weight.shape[0])
            raw = wide_mm(hidden, weight[lo:hi].T) + (bias[lo:hi].float() if bias is not None else 0.0)
            logits, _ = _transform(raw, scale, softcap)
            new_top = torch.maximum(top, logits.max(-1).values)
            rescale = torch.exp(top - new_top)
            p = torch.exp(logits - new_top[:, None])
            mass = mass * rescale + p.sum(-1)
            weighted = weighted * rescale + (p * logits).sum(-1)
            squared = squared * rescale * rescale + (p * p).sum(-1)
            top = new_top
            inside = (targets >= lo) & (targets < hi)
            target_logit[inside] = logits[rows[inside], targets[inside] - lo]
            logit_sum += logits.sum(-1)
        logz = top + torch.log(mass)
        ctx.save_for_backward(hidden, weight, bias, targets, logz)
        ctx.chunk_rows, ctx.scale, ctx.softcap = chunk_rows, scale, softcap
        mean_logit = logit_sum / weight.shape[0]
        entropy = logz - weighted / mass
        is_top1 = (target_logit >= top).float()
        log_sum_sq = torch.log(squared) - 2 * torch.log(mass)  # log sum_v p_v^2, p = exp(l - top) / mass
        ctx.mark_non_differentiable(mean_logit, entropy, is_top1, log_sum_sq)
        return target_logit - logz, mean_logit, entropy, is_top1, log_sum_sq

    @staticmethod
    def backward(ctx, grad_logp, _grad_mean, _grad_entropy, _grad_top1, _grad_sum_sq):
        hidden, weight, bias, targets, logz = ctx.saved_tensors
        g = grad_logp.float()
        rows = torch.arange(len(targets), device=hidden.device)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(hidden, dtype=torch.float32) if need_h else None
        grad_w = torch.empty_like(weight) if need_w else None
        grad_b = torch.empty_like(bias) if need_b and bias is not None else None
        for lo in range(0, weight.shape[0], ctx.chunk_rows):
            hi = min(lo + ctx.chunk_rows, weight.shape[0])
            w = weight[lo:hi]
            raw = wide_mm(hidden, w.T) + (bias[lo:hi].float() if bias is not None else 0.0)
            logits, slope = _transform(raw, ctx.scale, ctx.softcap)
            d_logits = -g[:, None] * torch.exp(logits - logz[:, None])  # d log p(target) / d logits = onehot - p
            inside = (targets >= lo) & (targets < hi)
            d_logits[rows[inside], targets[inside] - lo] += g[inside]
            d_raw = d_logits * slope
            d_mm = d_raw.to(weight.dtype) if weight.dtype in HALF and hidden.dtype == weight.dtype else d_raw
            if grad_h is not None:
                grad_h += wide_mm(d_mm, w)
            if grad_w is not None:
                grad_w[lo:hi] = wide_mm(d_mm.T, hidden).to(weight.dtype)
            if grad_b is not None:
                grad_b[lo:hi] = d_raw.sum(0).to(bias.dtype)
        return (grad_h.to(hidden.dtype) if grad_h is not None else None), grad_w, grad_b, None, None, None, None


class ScoringHead(torch.nn.Module):
    """The model's output layer as dpo-ray scores with it. While forward_pairs runs the model it keeps the final hidden
    states and hands back empty logits; called with the hidden states of the scored positions and their target
    tokens, it returns their log-probs (TokenLogProbs); otherwise it is the plain output layer. It owns that layer's
    own parameters (the same tensors: tied embeddings stay tied, state-dict names stay lm_head.*), so ZeRO-3 gathers
    them for each call."""

    def __init__(self, head: torch.nn.Linear, chunk_bytes: int, scale: float = 1.0, softcap: float | None = None):
        super().__init__()
        self.weight = head.weight
        self.bias = head.bias
        self.chunk_bytes, self.scale, self.softcap = chunk_bytes, scale, softcap
        self.capturing = False
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None):
        if targets is None and not self.capturing:
            return torch.nn.functional.linear(hidden, self.weight, self.bias)
        if targets is None:
            self.hidden = hidden
            return hidden.new_empty(*hidden.shape[:-1], 0)
        # per vocabulary row of a chunk: its fp32 weights, and its logits, probabilities and gradients for every token
        chunk_rows = max(1, self.chunk_bytes // (4 * (hidden.shape[-1] + 3 * len(targets))))
        return TokenLogProbs.apply(hidden, self.weight, self.bias, targets, chunk_rows, self.scale, self.softcap)

    def take_hidden(self) -> torch.Tensor:
        hidden, self.hidden = self.hidden, None
        return hidden


def install_scoring_head(model: torch.nn.Module, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> ScoringHead:
    """Replace a causal LM's output layer by a ScoringHead (before DeepSpeed or peft wrap the model)."""
    head = model.get_output_embeddings()
    if isinstance(head, ScoringHead):
        return head
    config = model.config
    scale = float(getattr(config, "logit_scale", None) or 1.0) / float(getattr(config, "logits_scaling", None) or 1.0)
    scoring = ScoringHead(head, chunk_bytes, scale, getattr(config, "final_logit_softcapping", None))
    model.set_output_embeddings(scoring)
    return scoring


def _scoring_head(model: torch.nn.Module) -> ScoringHead:
    inner = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
    head = inner.get_output_embeddings()
    if hasattr(head, "original_module"):  # peft's modules_to_save trains a copy: the one the forward runs now
        head = head.original_module if head.disable_adapters else head.modules_to_save[head.active_adapters[0]]
    if isinstance(head, ScoringHead):
        return head
    if inner is not model:
        raise RuntimeError("install_scoring_head before deepspeed.initialize: ZeRO-3 hooks its modules then")
    return install_scoring_head(inner)


def verbosity_weights(seq: torch.Tensor, tokens: torch.Tensor, ld_alpha: float) -> torch.Tensor:
    """Each scored token's LD-DPO weight: 1 within the shorter response's length of its pair, ld_alpha beyond it. A
    sequence's tokens come in order, so a token's position is how many of its sequence's tokens precede it."""
    n = len(tokens)
    seen = torch.nn.functional.one_hot(seq, n).cumsum(0)
    position = seen.gather(1, seq[:, None]).squeeze(1) - 1
    shared = torch.minimum(tokens[: n // 2], tokens[n // 2 :]).repeat(2)
    return torch.where(position < shared[seq], 1.0, ld_alpha).to(tokens.dtype)


def forward_pairs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], ld_alpha: float | None = None, sequence_group=None
) -> PairLogps:
    """Forward once and score each completion token from the position that predicts it (use_cache off: with a cache,
    transformers reads masks differently and packed sequences would attend across boundaries). With ld_alpha
    (LD-DPO, TRL's), a response's tokens beyond the shorter response of its pair count ld_alpha times. With a
    sequence-parallel group, this rank forwards its shard of the positions and scores the tokens predicted there; the
    sums over them are added up across the group."""
    head = _scoring_head(model)
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    predictors, targets, seq = batch["predictor_index"], batch["target_index"], batch["sequence_ids"]
    n = int(batch["num_sequences"])
    ones = torch.ones(len(seq), dtype=torch.float32, device=seq.device)  # the head's log-probs are fp32
    tokens = torch.zeros(n, dtype=torch.float32, device=seq.device).index_add(0, seq, ones)
    weights = verbosity_weights(seq, tokens, ld_alpha) if ld_alpha is not None else None
    if sequence_group is not None:
        inputs = sequence_parallel.shard_inputs(inputs, sequence_group)
        mine, predictors = sequence_parallel.owned(predictors, batch["input_ids"].shape[1], sequence_group)
        targets, seq = targets[mine], seq[mine]
        weights = weights[mine] if weights is not None else None
    if KV_INDEX in batch or sequence_group is not None:  # the attention does what the batch asks (dpo_ray.attention)
        install(getattr(model, "module", model).config._attn_implementation)
    head.capturing = True
    try:
        model(**inputs, use_cache=False)
    finally:
        head.capturing = False
    hidden = head.take_hidden()
    scored = hidden.reshape(-1, hidden.shape[-1])[predictors]
    token_logps, mean_logits, entropy, is_top1, log_sum_sq = head(scored, batch["input_ids"].reshape(-1)[targets])
    zeros = torch.zeros(n, dtype=token_logps.dtype, device=token_logps.device)
    sums = zeros.index_add(0, seq, token_logps * weights if weights is not None else token_logps)
    # WPO (eq. 2): the mean over a response's tokens of log p(token) - log sum_v p_v^2, the log of its weight
    aligned = zeros.index_add(0, seq, (token_logps - log_sum_sq).detach())
    chosen = seq < n // 2
    parts = [mean_logits[chosen].sum(), mean_logits[~chosen].sum(), entropy.sum(), is_top1[chosen].sum()]
    if sequence_group is not None:
        reduced = sequence_parallel.total(torch.cat([sums, aligned, torch.stack(parts)]), sequence_group)
        sums, aligned, parts = reduced[:n], reduced[n : 2 * n], list(reduced[2 * n :])
    aligned = aligned / tokens.clamp(min=1)
    return PairLogps(
        chosen_logps=sums[: n // 2],
        rejected_logps=sums[n // 2 :],
        chosen_tokens=tokens[: n // 2],
        rejected_tokens=tokens[n // 2 :],
        chosen_logits_sum=parts[0],
        rejected_logits_sum=parts[1],
        entropy_sum=parts[2],
        chosen_top1_sum=parts[3],
        chosen_log_weight=aligned[: n // 2],
        rejected_log_weight=aligned[n // 2 :],
    )
