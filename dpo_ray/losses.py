"""The DPO loss family as pure tensor functions of policy (and reference) sequence log-probs, per pair, unreduced.

Formulas follow TRL's DPOTrainer (1.16) exactly, with d = (log pi_c - log ref_c) - (log pi_r - log ref_r):
  sigmoid       -log s(beta d)                                       (DPO; cdpo_label_smoothing=e gives cDPO below)
  cDPO          -(1-e) log s(beta d) - e log s(-beta d)             (sigmoid with cdpo_label_smoothing=e)
  hinge         relu(1 - beta d)                                     (SLiC)
  ipo           (d_c/|c| - d_r/|r| - 1/(2 beta))^2                   (per-token log-ratios, as TRL)
  exo_pair      KL of softmax(beta d) to [1-e, e], e = label_smoothing > 0
  nca_pair      -log s(beta r_c) - 0.5 log s(-beta r_c) - 0.5 log s(-beta r_r)
  robust        (-(1-e) log s(beta d) + e log s(-beta d)) / (1-2e), e = label_smoothing in [0, 0.5)
  bco_pair      -log s(beta r_c) - log s(-beta r_r)
  sppo_hard     (r_c - 1/(2 beta))^2 + (r_r + 1/(2 beta))^2
  aot           sigmoid on sorted(pi_c - pi_r) - sorted(ref_c - ref_r) over the batch, label_smoothing e
  aot_unpaired  sigmoid on sorted(r_c) - sorted(r_r) over the batch, label_smoothing e
  apo_zero      1 - s(beta r_c) + s(beta r_r)
  apo_down      s(beta r_c) + 1 - s(beta d)
  discopop      blend of -log s(beta d) and exp(-beta d) by s(beta d / discopop_tau)
  sigmoid_norm  -log s(beta (r_c/|c| - r_r/|r|))                    (length-normalised sigmoid)
  sft           -log pi_c * N / T: its batch mean is the token-mean NLL of the chosen responses (T tokens, N pairs)
Reference-free (reference tensors None), a_c = log pi_c / |c|:
  simpo         -(1-e) log s(beta (a_c - a_r) - gamma) - e log s(-beta (a_c - a_r) + gamma), gamma = simpo_gamma
  orpo          -beta log s(log odds(a_c) - log odds(a_r)), odds(a) = exp(a) / (1 - exp(a)); ORPO adds the chosen NLL
With algo.f_divergence_type (f-DPO; the losses marked f_divergence in loss_types.py) every log-ratio r above is first
replaced by its score f_scores(r). Rewards are beta * log-ratios (beta * average log-probs for the reference-free
losses), as TRL logs them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .loss_types import LOSS_TYPES


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


def _smoothed_sigmoid(x: torch.Tensor, eps: float) -> torch.Tensor:
    return -F.logsigmoid(x) * (1 - eps) - F.logsigmoid(-x) * eps


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
    """(losses, chosen_rewards, rejected_rewards), each of shape (pairs,); see the module docstring for formulas."""
    spec = LOSS_TYPES[loss_type]  # its options and their values are validated when the config is composed
    unknown = set(variant_options) - set(spec.options)
    if unknown:
        raise TypeError(f"loss {loss_type!r} takes no option(s) {', '.join(sorted(unknown))}")
    if spec.per_token and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError(f"loss {loss_type!r} needs chosen_lengths and rejected_lengths")
    pc, pr = policy_chosen_logps, policy_rejected_logps
    if spec.reference_free:
        avg_c, avg_r = pc / chosen_lengths.clamp(min=1), pr / rejected_lengths.clamp(min=1)
        chosen_rewards, rejected_rewards = beta * avg_c.detach(), beta * avg_r.detach()
        if loss_type == "sft":
            losses = -pc * (len(pc) / chosen_lengths.sum().clamp(min=1))
        elif loss_type == "simpo":
            gamma = variant_options.get("simpo_gamma", 0.5)
            losses = _smoothed_sigmoid(beta * (avg_c - avg_r) - gamma, label_smoothing)
        else:  # orpo; log1p(-exp(a)) needs a < 0, which average log-probs are
            log_odds = (avg_c - avg_r) - (torch.log1p(-torch.exp(avg_c)) - torch.log1p(-torch.exp(avg_r)))
            losses = -beta * F.logsigmoid(log_odds)
        return losses, chosen_rewards, rejected_rewards

    if reference_chosen_logps is None or reference_rejected_logps is None:
        raise ValueError(f"loss {loss_type!r} needs reference log-probs")
    rc, rr = reference_chosen_logps, reference_rejected_logps
    logratio_c, logratio_r = pc - rc, pr - rr
    f_type, alpha = (
        str(variant_options.get("f_divergence_type", "reverse_kl")),
        variant_options.get("f_alpha_divergence_coef", 0.5),
    )
    chosen_logratios, rejected_logratios = f_scores(logratio_c, f_type, alpha), f_scores(logratio_r, f_type, alpha)
    d = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = _smoothed_sigmoid(beta * d, variant_options.get("cdpo_label_smoothing", 0.0))
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * d)
    elif loss_type == "ipo":
        avg = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / rejected_lengths.clamp(min=1)
        losses = (avg - 1 / (2 * beta)) ** 2
    elif loss_type == "exo_pair":
        eps = torch.tensor(label_smoothing, dtype=d.dtype, device=d.device)
        losses = torch.sigmoid(beta * d) * (F.logsigmoid(beta * d) - torch.log1p(-eps)) + torch.sigmoid(-beta * d) * (
            F.logsigmoid(-beta * d) - torch.log(eps)
        )
    elif loss_type == "nca_pair":
        losses = (
            -F.logsigmoid(beta * chosen_logratios)
            - 0.5 * F.logsigmoid(-beta * chosen_logratios)
            - 0.5 * F.logsigmoid(-beta * rejected_logratios)
        )
    elif loss_type == "robust":
        eps = label_smoothing
        losses = (-(1 - eps) * F.logsigmoid(beta * d) + eps * F.logsigmoid(-beta * d)) / (1 - 2 * eps)
    elif loss_type == "bco_pair":
        losses = -F.logsigmoid(beta * chosen_logratios) - F.logsigmoid(-beta * rejected_logratios)
    elif loss_type == "sppo_hard":
        losses = (chosen_logratios - 0.5 / beta) ** 2 + (rejected_logratios + 0.5 / beta) ** 2
    elif loss_type == "aot":
        delta = torch.sort(pc - pr, dim=0).values - torch.sort(rc - rr, dim=0).values
        losses = _smoothed_sigmoid(beta * delta, label_smoothing)
    elif loss_type == "aot_unpaired":
        delta = torch.sort(chosen_logratios, dim=0).values - torch.sort(rejected_logratios, dim=0).values
        losses = _smoothed_sigmoid(beta * delta, label_smoothing)
    elif loss_type == "apo_zero":
        losses = 1 - torch.sigmoid(beta * chosen_logratios) + torch.sigmoid(beta * rejected_logratios)
    elif loss_type == "apo_down":
        losses = torch.sigmoid(beta * chosen_logratios) + 1 - torch.sigmoid(beta * d)
    elif loss_type == "discopop":
        logits = beta * d
        modulation = torch.sigmoid(logits / variant_options.get("discopop_tau", 0.05))
        losses = -F.logsigmoid(logits) * (1 - modulation) + torch.exp(-logits) * modulation
    else:  # sigmoid_norm
        avg = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / rejected_lengths.clamp(min=1)
        losses = -F.logsigmoid(beta * avg)
    return losses, beta * logratio_c.detach(), beta * logratio_r.detach()


def unpaired_loss(
    logps: torch.Tensor,
    reference_logps: torch.Tensor,
    kl_logps: torch.Tensor,
    reference_kl_logps: torch.Tensor,
    desirable: torch.Tensor,
    loss_type: str,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    kl_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRL's KTO losses of one micro-batch of labelled completions: (per-example weighted losses, rewards, z0).

    kto (KTO eq. 7): r = log pi(y|x) - log ref(y|x); the reference point z0 = the batch's mean log-ratio of mismatched
    (x, y') pairs (those kl_mask keeps), detached and clamped at 0; desirable 1 - s(beta (r - z0)), undesirable
    1 - s(beta (z0 - r)). apo_zero_unpaired: desirable 1 - s(beta r), undesirable s(beta r) (no z0). Rewards are
    beta r, detached."""
    logratios = logps - reference_logps
    if loss_type == "kto":
        kl = (kl_logps - reference_kl_logps).detach()
        if kl_mask is None:
            kl_mask = torch.ones_like(kl, dtype=torch.bool)
        z0 = (torch.where(kl_mask, kl, 0.0).sum() / kl_mask.sum().clamp(min=1)).clamp(min=0)
        good, bad = 1 - torch.sigmoid(beta * (logratios - z0)), 1 - torch.sigmoid(beta * (z0 - logratios))
    elif loss_type == "apo_zero_unpaired":
        z0 = torch.zeros((), dtype=logps.dtype, device=logps.device)
        good, bad = 1 - torch.sigmoid(beta * logratios), torch.sigmoid(beta * logratios)
    else:
        raise ValueError(f"unknown unpaired loss type {loss_type!r}")
    losses = torch.where(desirable, desirable_weight * good, undesirable_weight * bad)
    return losses, beta * logratios.detach(), z0
