"""The training objective of one micro-batch (preference loss + optional NLL), and its metrics with TRL's names."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .config import AlgoConfig
from .data.batches import StepScale
from .logprobs import PairLogps
from .losses import LABEL_SMOOTHING_LOSSES, REFERENCE_FREE, check_options, dpo_loss


def loss_terms(algo: AlgoConfig) -> list[tuple[str, float]]:
    """(loss type, weight) pairs of algo.loss_type, validated before any actor starts."""
    types = [t.strip() for t in algo.loss_type.split(",") if t.strip()]
    weights = list(algo.loss_weights) or [1.0] * len(types)
    if not types or len(weights) != len(types):
        raise ValueError(
            f"algo.loss_weights has {len(weights)} weights for {len(types)} loss types ({algo.loss_type!r})"
        )
    for t in types:
        check_options(t, algo.label_smoothing if t in LABEL_SMOOTHING_LOSSES else 0.0)
    if algo.label_smoothing and not set(types) & set(LABEL_SMOOTHING_LOSSES):
        check_options(types[0], algo.label_smoothing)
    return list(zip(types, weights))


def needs_reference(algo: AlgoConfig) -> bool:
    return any(t not in REFERENCE_FREE for t, _ in loss_terms(algo))


def nll_weight(algo: AlgoConfig, terms: list[tuple[str, float]] | None = None) -> float:
    """The chosen-NLL coefficient: rpo_alpha, plus each sft term's weight, plus ORPO's own NLL."""
    return algo.rpo_alpha + sum(w for t, w in (terms or loss_terms(algo)) if t in ("sft", "orpo"))


def _options(loss_type: str, algo: AlgoConfig) -> dict[str, float]:
    return {
        "sigmoid": {"cdpo_label_smoothing": algo.cdpo_label_smoothing},
        "discopop": {"discopop_tau": algo.discopop_tau},
        "simpo": {"simpo_gamma": algo.simpo_gamma},
    }.get(loss_type, {})


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
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            out.chosen_logps,
            out.rejected_logps,
            reference_chosen,
            reference_rejected,
            loss_type=loss_type,
            beta=algo.beta,
            label_smoothing=algo.label_smoothing if loss_type in LABEL_SMOOTHING_LOSSES else 0.0,
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
