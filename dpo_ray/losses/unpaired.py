"""The unpaired (KTO-style) losses of labelled completions, TRL's KTOTrainer (1.16): one registered formula each, of
r = log pi(y|x) - log ref(y|x) per example and the log-ratios of mismatched (x, y') pairs (KTO's KL estimate)."""

from __future__ import annotations

import torch

from .registry import FORMULAS, LOSSES, Kind, formula


@formula("kto")
def kto(
    logratios: torch.Tensor, kl: torch.Tensor, kl_mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KTO eq. 7: the reference point z0 = the mean mismatched log-ratio (of those kl_mask keeps), clamped at 0;
    desirable 1 - s(beta (r - z0)), undesirable 1 - s(beta (z0 - r))."""
    z0 = (torch.where(kl_mask, kl, 0.0).sum() / kl_mask.sum().clamp(min=1)).clamp(min=0)
    return 1 - torch.sigmoid(beta * (logratios - z0)), 1 - torch.sigmoid(beta * (z0 - logratios)), z0


@formula("apo_zero_unpaired")
def apo_zero_unpaired(
    logratios: torch.Tensor, kl: torch.Tensor, kl_mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """APO-zero's unpaired form: desirable 1 - s(beta r), undesirable s(beta r); no reference point (z0 = 0)."""
    z0 = torch.zeros((), dtype=logratios.dtype, device=logratios.device)
    return 1 - torch.sigmoid(beta * logratios), torch.sigmoid(beta * logratios), z0


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
    """TRL's KTO losses of one micro-batch of labelled completions by the registered formula of loss_type: (per-example
    weighted losses, rewards, z0). The mismatched log-ratios are detached; rewards are beta r, detached."""
    if loss_type not in LOSSES or LOSSES[loss_type].kind is not Kind.UNPAIRED:
        raise ValueError(f"unknown unpaired loss type {loss_type!r}")
    logratios = logps - reference_logps
    kl = (kl_logps - reference_kl_logps).detach()
    if kl_mask is None:
        kl_mask = torch.ones_like(kl, dtype=torch.bool)
    good, bad, z0 = FORMULAS[loss_type](logratios, kl, kl_mask, beta)
    losses = torch.where(desirable, desirable_weight * good, undesirable_weight * bad)
    return losses, beta * logratios.detach(), z0
