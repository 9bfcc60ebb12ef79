"""The training objective of one micro-batch (preference loss + optional NLL), and its metrics with TRL's names."""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

import torch

from .config import AlgoConfig
from .data.batches import StepScale
from .logprobs import PairLogps
from .losses import dpo_loss


def micro_batch_objective(out: PairLogps, reference_chosen: Optional[torch.Tensor], reference_rejected: Optional[torch.Tensor],
                          algo: AlgoConfig, scale: StepScale, weight: float = 1.0) -> Tuple[torch.Tensor, Dict[str, float]]:
    """This micro-batch's share of the step loss (sums over the step's micro-batches to the exact global mean),
    and metric sums that reduce_metrics turns into means."""
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        out.chosen_logps, out.rejected_logps, reference_chosen, reference_rejected,
        loss_type=algo.loss_type, beta=algo.beta, label_smoothing=algo.label_smoothing,
        chosen_lengths=out.chosen_tokens, rejected_lengths=out.rejected_tokens)
    nll_sum = -out.chosen_token_logps.sum()
    loss = weight * (losses.sum() / scale.pairs + algo.rpo_alpha * nll_sum / scale.chosen_tokens)
    sums = {
        "pairs": len(losses),
        "loss": loss.item(),
        "rewards/chosen": chosen_rewards.sum().item(),
        "rewards/rejected": rejected_rewards.sum().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).sum().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).sum().item(),
        "logps/chosen": out.chosen_logps.detach().sum().item(),
        "logps/rejected": out.rejected_logps.detach().sum().item(),
        "logits/chosen": out.chosen_logits_sum.item(),
        "logits/rejected": out.rejected_logits_sum.item(),
        "nll_loss": nll_sum.item(),
        "tokens/chosen": out.chosen_tokens.sum().item(),
        "tokens/rejected": out.rejected_tokens.sum().item(),
    }
    if reference_chosen is not None:
        sums["kl/chosen"] = (out.chosen_logps.detach() - reference_chosen).sum().item()
    return loss, {k: v * weight for k, v in sums.items()}


PER_PAIR = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")
PER_CHOSEN_TOKEN = ("logits/chosen", "nll_loss", "kl/chosen")


def add_metric_sums(parts: Iterable[Dict[str, float]]) -> Dict[str, float]:
    total: Dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            total[k] = total.get(k, 0.0) + v
    return total


def reduce_metrics(parts: Iterable[Dict[str, float]]) -> Dict[str, float]:
    """Sum micro-batch metric sums over ranks and micro-batches, then divide by the right count."""
    total = add_metric_sums(parts)
    pairs = max(total.get("pairs", 0.0), 1.0)
    out = {"loss": total.get("loss", 0.0)}
    out.update({k: total[k] / pairs for k in PER_PAIR if k in total})
    out.update({k: total[k] / max(total["tokens/chosen"], 1.0) for k in PER_CHOSEN_TOKEN if k in total})
    if "logits/rejected" in total:
        out["logits/rejected"] = total["logits/rejected"] / max(total["tokens/rejected"], 1.0)
    return out
