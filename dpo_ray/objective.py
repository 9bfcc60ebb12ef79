"""The training objective of one micro-batch (preference loss + optional NLL), and its metrics with TRL's names."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .config import AlgoConfig
from .data.batches import StepScale
from .logprobs import PairLogps
from .loss_types import LOSS_TYPES, NLL_TERMS
from .loss_types import loss_terms as parse_terms
from .losses import preference_loss


def loss_terms(algo: AlgoConfig) -> list[tuple[str, float]]:
    """(loss type, weight) of each term of algo.loss_type (validated when the config was composed)."""
    return parse_terms(algo.loss_type, algo.loss_weights)


def needs_reference(algo: AlgoConfig) -> bool:
    return any(not LOSS_TYPES[t].reference_free for t, _ in loss_terms(algo))


def nll_weight(algo: AlgoConfig, terms: list[tuple[str, float]] | None = None) -> float:
    """The chosen-NLL coefficient: rpo_alpha, plus each sft term's weight, plus ORPO's own NLL."""
    return algo.rpo_alpha + sum(w for t, w in (terms or loss_terms(algo)) if t in NLL_TERMS)


def _options(loss_type: str, algo: AlgoConfig) -> dict[str, float]:
    """The further algo.* options this loss reads, by the loss table."""
    return {name: getattr(algo, name) for name in LOSS_TYPES[loss_type].options}


def micro_batch_objective(
    out: PairLogps,
    reference_chosen: torch.Tensor | None,
    reference_rejected: torch.Tensor | None,
    algo: AlgoConfig,
    scale: StepScale,
    weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """This micro-batch's share of the step loss (sums over the step's micro-batches to the exact global mean),
    and metric sums that reduce_metrics turns into means.

    sft terms (and ORPO's NLL) use the token mean over the whole step, not per micro-batch, so splits stay exact."""
    pair_losses, rewards, terms = torch.zeros_like(out.chosen_logps), None, loss_terms(algo)
    for loss_type, loss_weight in terms:
        if loss_type == "sft":
            continue
        losses, chosen_rewards, rejected_rewards = preference_loss(
            out.chosen_logps,
            out.rejected_logps,
            reference_chosen,
            reference_rejected,
            loss_type=loss_type,
            beta=algo.beta,
            label_smoothing=algo.label_smoothing if LOSS_TYPES[loss_type].label_smoothing else 0.0,
            chosen_lengths=out.chosen_tokens,
            rejected_lengths=out.rejected_tokens,
            **_options(loss_type, algo),
        )
        pair_losses = pair_losses + loss_weight * losses
        if rewards is None:
            rewards = (chosen_rewards, rejected_rewards)
    if rewards is None:  # sft alone: TRL's reference-free rewards
        rewards = (
            algo.beta * (out.chosen_logps / out.chosen_tokens.clamp(min=1)).detach(),
            algo.beta * (out.rejected_logps / out.rejected_tokens.clamp(min=1)).detach(),
        )
    chosen_rewards, rejected_rewards = rewards
    nll_sum = -out.chosen_logps.sum()
    loss = weight * (pair_losses.sum() / scale.pairs + nll_weight(algo, terms) * nll_sum / scale.chosen_tokens)
    sums = {
        "pairs": len(pair_losses),
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


PER_PAIR = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)
PER_CHOSEN_TOKEN = ("logits/chosen", "nll_loss", "kl/chosen")


def add_metric_sums(parts: Iterable[dict[str, float]]) -> dict[str, float]:
    """Key-wise sums of the numbers; other entries (a rank's non-finite pair positions) are not metrics."""
    total: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            if isinstance(v, (int, float)):
                total[k] = total.get(k, 0.0) + v
    return total


def reduce_metrics(parts: Iterable[dict[str, float]]) -> dict[str, float]:
    """Sum micro-batch metric sums over ranks and micro-batches, then divide by the right count."""
    total = add_metric_sums(parts)
    pairs = max(total.get("pairs", 0.0), 1.0)
    out = {"loss": total.get("loss", 0.0)}
    out.update({k: total[k] / pairs for k in PER_PAIR if k in total})
    out.update({k: total[k] / max(total["tokens/chosen"], 1.0) for k in PER_CHOSEN_TOKEN if k in total})
    if "logits/rejected" in total:
        out["logits/rejected"] = total["logits/rejected"] / max(total["tokens/rejected"], 1.0)
    return out
