"""The DPO loss family as pure tensor functions of policy and reference sequence log-probs."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid",)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: Optional[torch.Tensor],
    reference_rejected_logps: Optional[torch.Tensor],
    *,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    chosen_lengths: Optional[torch.Tensor] = None,
    rejected_lengths: Optional[torch.Tensor] = None,
    **variant_options,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and implicit rewards beta * (log pi - log pi_ref), unreduced.

    sigmoid: -(1 - eps) log sigmoid(beta d) - eps log sigmoid(-beta d), d the chosen-minus-rejected log-ratio;
    eps = label_smoothing is conservative DPO (cDPO); eps = 0 is the DPO paper's loss.
    """
    if variant_options:
        raise TypeError(f"unknown options for loss {loss_type!r}: {', '.join(variant_options)}")
    if reference_chosen_logps is None or reference_rejected_logps is None:
        raise ValueError(f"loss {loss_type!r} needs reference log-probs")
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    delta = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta) * (1 - label_smoothing) - F.logsigmoid(-beta * delta) * label_smoothing
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; known: {', '.join(LOSS_TYPES)}")
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
