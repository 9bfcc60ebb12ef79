"""The pair losses as pure tensor functions of policy (and reference) sequence log-probs, per pair, unreduced: one
registered formula each, TRL's DPOTrainer (1.16) exactly.

A formula reads its pairs' scores: with d = s_c - s_r, s is a response's log-ratio r = log pi - log ref, or with
algo.f_divergence_type (f-DPO, the losses registered with f_divergence) its score f_scores(r); for the reference-free
losses s is the average log-prob a = log pi / |y|. Rewards are beta * log-ratios (beta * average log-probs for the
reference-free losses), as TRL logs them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .registry import F_OPTIONS, FORMULAS, LOSSES, Kind, formula


def f_scores(logratios: torch.Tensor, f_divergence_type: str, alpha: float) -> torch.Tensor:
    """f-DPO's score of a log-ratio u = log(pi/ref), f'(exp(u)) of the f-divergence (TRL's): reverse_kl u (DPO),
    forward_kl 1 - exp(-u), js_divergence log 2 + log s(u), alpha_divergence (exp((alpha-1) u) - 1) / (alpha-1)
    (u at alpha = 1; the exponent clamped at 80 so it stays finite)."""
    if f_divergence_type == "forward_kl":
        return 1 - torch.exp(-logratios)
    if f_divergence_type == "js_divergence":
        return math.log(2) + F.logsigmoid(logratios)
    if f_divergence_type == "alpha_divergence" and abs(alpha - 1.0) >= 1e-6:
        wide = torch.promote_types(logratios.dtype, torch.float32)  # at least float32, as TRL computes it
        exponent = torch.clamp(((alpha - 1.0) * logratios).to(wide), max=80.0)
        return ((torch.exp(exponent) - 1.0) / (alpha - 1.0)).to(logratios.dtype)
    return logratios


@dataclass(frozen=True)
class Pairs:
    """What a formula reads, one entry per pair."""

    chosen: torch.Tensor  # the policy's sequence log-probs
    rejected: torch.Tensor
    reference_chosen: torch.Tensor | None  # None for the reference-free losses
    reference_rejected: torch.Tensor | None
    chosen_lengths: torch.Tensor | None  # response tokens (given to the losses registered per_token)
    rejected_lengths: torch.Tensor | None
    chosen_scores: torch.Tensor  # s_c: the (f-)scored log-ratio, or the average log-prob when reference-free
    rejected_scores: torch.Tensor
    margin: torch.Tensor  # d = s_c - s_r


def _smoothed_sigmoid(x: torch.Tensor, eps: float) -> torch.Tensor:
    return -F.logsigmoid(x) * (1 - eps) - F.logsigmoid(-x) * eps


def _length_normalised_margin(p: Pairs) -> torch.Tensor:
    return p.chosen_scores / p.chosen_lengths.clamp(min=1) - p.rejected_scores / p.rejected_lengths.clamp(min=1)


@formula("sigmoid")
def sigmoid(p: Pairs, beta: float, cdpo_label_smoothing: float = 0.0) -> torch.Tensor:
    """-log s(beta d); cDPO with cdpo_label_smoothing = e: -(1-e) log s(beta d) - e log s(-beta d)."""
    return _smoothed_sigmoid(beta * p.margin, cdpo_label_smoothing)


@formula("hinge")
def hinge(p: Pairs, beta: float) -> torch.Tensor:
    """relu(1 - beta d)."""
    return torch.relu(1 - beta * p.margin)


@formula("ipo")
def ipo(p: Pairs, beta: float) -> torch.Tensor:
    """(s_c/|c| - s_r/|r| - 1/(2 beta))^2: per-token log-ratios, as TRL."""
    return (_length_normalised_margin(p) - 1 / (2 * beta)) ** 2


@formula("exo_pair")
def exo_pair(p: Pairs, beta: float, label_smoothing: float) -> torch.Tensor:
    """KL of softmax(beta d) to [1-e, e], e = label_smoothing > 0."""
    d = p.margin
    eps = torch.tensor(label_smoothing, dtype=d.dtype, device=d.device)
    return torch.sigmoid(beta * d) * (F.logsigmoid(beta * d) - torch.log1p(-eps)) + torch.sigmoid(-beta * d) * (
        F.logsigmoid(-beta * d) - torch.log(eps)
    )


@formula("nca_pair")
def nca_pair(p: Pairs, beta: float) -> torch.Tensor:
    """-log s(beta s_c) - 0.5 log s(-beta s_c) - 0.5 log s(-beta s_r)."""
    return (
        -F.logsigmoid(beta * p.chosen_scores)
        - 0.5 * F.logsigmoid(-beta * p.chosen_scores)
        - 0.5 * F.logsigmoid(-beta * p.rejected_scores)
    )


@formula("robust")
def robust(p: Pairs, beta: float, label_smoothing: float) -> torch.Tensor:
    """(-(1-e) log s(beta d) + e log s(-beta d)) / (1-2e), e = label_smoothing in [0, 0.5)."""
    eps = label_smoothing
    return (-(1 - eps) * F.logsigmoid(beta * p.margin) + eps * F.logsigmoid(-beta * p.margin)) / (1 - 2 * eps)


@formula("bco_pair")
def bco_pair(p: Pairs, beta: float) -> torch.Tensor:
    """-log s(beta s_c) - log s(-beta s_r)."""
    return -F.logsigmoid(beta * p.chosen_scores) - F.logsigmoid(-beta * p.rejected_scores)


@formula("sppo_hard")
def sppo_hard(p: Pairs, beta: float) -> torch.Tensor:
    """(s_c - 1/(2 beta))^2 + (s_r + 1/(2 beta))^2."""
    return (p.chosen_scores - 0.5 / beta) ** 2 + (p.rejected_scores + 0.5 / beta) ** 2


@formula("aot")
def aot(p: Pairs, beta: float, label_smoothing: float) -> torch.Tensor:
    """Smoothed sigmoid on sorted(pi_c - pi_r) - sorted(ref_c - ref_r) over the batch."""
    delta = (
        torch.sort(p.chosen - p.rejected, dim=0).values
        - torch.sort(p.reference_chosen - p.reference_rejected, dim=0).values
    )
    return _smoothed_sigmoid(beta * delta, label_smoothing)


@formula("aot_unpaired")
def aot_unpaired(p: Pairs, beta: float, label_smoothing: float) -> torch.Tensor:
    """Smoothed sigmoid on sorted(s_c) - sorted(s_r) over the batch."""
    delta = torch.sort(p.chosen_scores, dim=0).values - torch.sort(p.rejected_scores, dim=0).values
    return _smoothed_sigmoid(beta * delta, label_smoothing)


@formula("apo_zero")
def apo_zero(p: Pairs, beta: float) -> torch.Tensor:
    """1 - s(beta s_c) + s(beta s_r)."""
    return 1 - torch.sigmoid(beta * p.chosen_scores) + torch.sigmoid(beta * p.rejected_scores)


@formula("apo_down")
def apo_down(p: Pairs, beta: float) -> torch.Tensor:
    """s(beta s_c) + 1 - s(beta d)."""
    return torch.sigmoid(beta * p.chosen_scores) + 1 - torch.sigmoid(beta * p.margin)


@formula("discopop")
def discopop(p: Pairs, beta: float, discopop_tau: float = 0.05) -> torch.Tensor:
    """-log s(beta d) and exp(-beta d), blended by s(beta d / discopop_tau)."""
    logits = beta * p.margin
    modulation = torch.sigmoid(logits / discopop_tau)
    return -F.logsigmoid(logits) * (1 - modulation) + torch.exp(-logits) * modulation


@formula("sigmoid_norm")
def sigmoid_norm(p: Pairs, beta: float) -> torch.Tensor:
    """-log s(beta (s_c/|c| - s_r/|r|)): length-normalised sigmoid."""
    return -F.logsigmoid(beta * _length_normalised_margin(p))


@formula("sft")
def sft(p: Pairs, beta: float) -> torch.Tensor:
    """-log pi_c * N / T: its batch mean is the token-mean NLL of the chosen responses (T tokens, N pairs)."""
    return -p.chosen * (len(p.chosen) / p.chosen_lengths.sum().clamp(min=1))


@formula("simpo")
def simpo(p: Pairs, beta: float, label_smoothing: float, simpo_gamma: float = 0.5) -> torch.Tensor:
    """-(1-e) log s(beta d - gamma) - e log s(-beta d + gamma), d = a_c - a_r, gamma = simpo_gamma."""
    return _smoothed_sigmoid(beta * p.margin - simpo_gamma, label_smoothing)


@formula("orpo")
def orpo(p: Pairs, beta: float) -> torch.Tensor:
    """-beta log s(log odds(a_c) - log odds(a_r)), odds(a) = exp(a) / (1 - exp(a)); ORPO adds the chosen NLL."""
    # log1p(-exp(a)) needs a < 0, which average log-probs are
    log_odds = p.margin - (torch.log1p(-torch.exp(p.chosen_scores)) - torch.log1p(-torch.exp(p.rejected_scores)))
    return -beta * F.logsigmoid(log_odds)


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor | None,
    reference_rejected_logps: torch.Tensor | None,
    *,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    **variant_options,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses, chosen_rewards, rejected_rewards), each of shape (pairs,), by the registered formula of loss_type;
    variant_options are the further algo.* options it reads (registry.Loss.options)."""
    spec = LOSSES[loss_type]  # its options and their values are validated when the config is composed
    if spec.kind is Kind.UNPAIRED:
        raise ValueError(f"loss {loss_type!r} is unpaired: unpaired.unpaired_loss scores labelled completions")
    unknown = set(variant_options) - set(spec.options)
    if unknown:
        raise TypeError(f"loss {loss_type!r} takes no option(s) {', '.join(sorted(unknown))}")
    if spec.per_token and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError(f"loss {loss_type!r} needs chosen_lengths and rejected_lengths")
    options = {k: v for k, v in variant_options.items() if k not in F_OPTIONS}
    if spec.label_smoothing is not None:
        options["label_smoothing"] = label_smoothing
    pc, pr = policy_chosen_logps, policy_rejected_logps
    lengths = chosen_lengths, rejected_lengths
    if spec.kind is Kind.REFERENCE_FREE:
        avg_c, avg_r = pc / chosen_lengths.clamp(min=1), pr / rejected_lengths.clamp(min=1)
        pairs = Pairs(pc, pr, None, None, *lengths, avg_c, avg_r, margin=avg_c - avg_r)
        losses = FORMULAS[loss_type](pairs, beta, **options)
        return losses, beta * avg_c.detach(), beta * avg_r.detach()

    if reference_chosen_logps is None or reference_rejected_logps is None:
        raise ValueError(f"loss {loss_type!r} needs reference log-probs")
    rc, rr = reference_chosen_logps, reference_rejected_logps
    logratio_c, logratio_r = pc - rc, pr - rr
    f_type, alpha = (
        str(variant_options.get("f_divergence_type", "reverse_kl")),
        variant_options.get("f_alpha_divergence_coef", 0.5),
    )
    chosen_scores, rejected_scores = f_scores(logratio_c, f_type, alpha), f_scores(logratio_r, f_type, alpha)
    pairs = Pairs(pc, pr, rc, rr, *lengths, chosen_scores, rejected_scores, margin=chosen_scores - rejected_scores)
    return FORMULAS[loss_type](pairs, beta, **options), beta * logratio_c.detach(), beta * logratio_r.detach()
