"""The training objective of one micro-batch (preference loss + optional NLL), and its metrics with TRL's names."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .data.batches import StepScale
from .logprobs import PairLogps
from .losses.paired import preference_loss
from .losses.registry import LOSSES, is_unpaired
from .losses.registry import loss_terms as parse_terms
from .losses.unpaired import unpaired_loss
from .schema import AlgoConfig


def loss_terms(algo: AlgoConfig) -> list[tuple[str, float]]:
    """(loss type, weight) of each term of algo.loss_type (validated when the config was composed)."""
    return parse_terms(algo.loss_type, algo.loss_weights)


def needs_reference(algo: AlgoConfig) -> bool:
    return any(not LOSSES[t].reference_free for t, _ in loss_terms(algo))


def nll_weight(algo: AlgoConfig, terms: list[tuple[str, float]] | None = None) -> float:
    """The chosen-NLL coefficient: rpo_alpha, plus the weight of each term registered with nll (sft, ORPO's own)."""
    return algo.rpo_alpha + sum(w for t, w in (terms or loss_terms(algo)) if LOSSES[t].nll)


def _options(loss_type: str, algo: AlgoConfig) -> dict[str, float]:
    """The further algo.* options this loss reads, by the loss registry."""
    return {name: getattr(algo, name) for name in LOSSES[loss_type].options}


def micro_batch_objective(
    out: PairLogps,
    reference_chosen: torch.Tensor | None,
    reference_rejected: torch.Tensor | None,
    algo: AlgoConfig,
    scale: StepScale,
    weight: float = 1.0,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """This micro-batch's share of the step loss (sums over the step's micro-batches to the exact global mean),
    metric sums (0-d tensors, read once per step: see metric_floats) that reduce_metrics turns into means, and which
    pairs are not finite.

    A pair whose log-probs, reference log-probs or loss are not finite adds nothing: its inputs are replaced by finite
    stand-ins and its loss by zero, so its gradient is zero and no host synchronisation decides it.
    sft terms (and ORPO's NLL) use the token mean over the whole step, not per micro-batch, so splits stay exact.
    labels: an unpaired loss's desirable flags, one per example (its completion in the chosen slot, a mismatched one
    in the other)."""
    if is_unpaired(algo.loss_type):
        if labels is None:
            raise ValueError(f"algo.loss_type={algo.loss_type!r} is unpaired: it needs each example's label")
        return _unpaired_objective(out, reference_chosen, reference_rejected, labels, algo, scale, weight)
    chosen_tokens, rejected_tokens = out.chosen_tokens.clamp(min=1), out.rejected_tokens.clamp(min=1)
    finite = torch.isfinite(out.chosen_logps.detach()) & torch.isfinite(out.rejected_logps.detach())
    if reference_chosen is not None:
        finite = finite & torch.isfinite(reference_chosen) & torch.isfinite(reference_rejected)
        reference_chosen = torch.where(finite, reference_chosen, 0.0)
        reference_rejected = torch.where(finite, reference_rejected, 0.0)
    # Stand-ins: an average log-prob of -1 a token keeps every loss (ORPO's log-odds too) finite.
    chosen = torch.where(finite, out.chosen_logps, -chosen_tokens.to(out.chosen_logps.dtype))
    rejected = torch.where(finite, out.rejected_logps, -rejected_tokens.to(out.rejected_logps.dtype))
    pair_losses, rewards, terms = torch.zeros_like(chosen), None, loss_terms(algo)
    pair_weights = None  # WPO (TRL's use_weighting): each pair's terms weighed by its responses' probability weights
    if algo.use_weighting:
        pair_weights = torch.exp(torch.where(finite, out.chosen_log_weight + out.rejected_log_weight, 0.0))
    for loss_type, loss_weight in terms:
        if loss_type == "sft":
            continue
        losses, chosen_rewards, rejected_rewards = preference_loss(
            chosen,
            rejected,
            reference_chosen,
            reference_rejected,
            loss_type=loss_type,
            beta=algo.beta,
            label_smoothing=algo.label_smoothing if LOSSES[loss_type].label_smoothing else 0.0,
            chosen_lengths=out.chosen_tokens,
            rejected_lengths=out.rejected_tokens,
            **_options(loss_type, algo),
        )
        pair_losses = pair_losses + loss_weight * (losses if pair_weights is None else losses * pair_weights)
        if rewards is None:
            rewards = (chosen_rewards, rejected_rewards)
    if rewards is None:  # sft alone: TRL's reference-free rewards
        rewards = (algo.beta * (chosen / chosen_tokens).detach(), algo.beta * (rejected / rejected_tokens).detach())
    finite = finite & torch.isfinite(pair_losses.detach())
    pair_losses = torch.where(finite, pair_losses, 0.0)
    kept = lambda x: torch.where(finite, x.detach(), 0.0).sum()  # noqa: E731
    chosen_rewards, rejected_rewards = rewards
    kept_chosen = torch.where(finite, chosen, 0.0)
    nll_sum = -kept_chosen.sum()
    nll_term = nll_weight(algo, terms) * nll_sum
    sft_weight = sum(w for t, w in terms if t == "sft")
    if pair_weights is not None and sft_weight:  # sft terms are weighed per pair too (rpo_alpha's NLL is not, as TRL)
        nll_term = nll_term + sft_weight * (-(kept_chosen * pair_weights).sum() - nll_sum)
    loss = weight * (pair_losses.sum() / scale.pairs + nll_term / scale.chosen_tokens)
    sums = {
        "pairs": finite.sum(),
        "loss": loss.detach(),
        "rewards/chosen": kept(chosen_rewards),
        "rewards/rejected": kept(rejected_rewards),
        "rewards/accuracies": kept((chosen_rewards > rejected_rewards).float()),
        "rewards/margins": kept(chosen_rewards - rejected_rewards),
        "logps/chosen": kept(chosen),
        "logps/rejected": kept(rejected),
        "logits/chosen": out.chosen_logits_sum.detach(),
        "logits/rejected": out.rejected_logits_sum.detach(),
        "entropy": out.entropy_sum.detach(),
        "mean_token_accuracy": out.chosen_top1_sum.detach(),
        "nll_loss": nll_sum.detach(),
        "tokens/chosen": kept(out.chosen_tokens),
        "tokens/rejected": kept(out.rejected_tokens),
    }
    if reference_chosen is not None:
        sums["kl/chosen"] = kept(chosen - reference_chosen)
    return loss, {k: v * weight for k, v in sums.items()}, ~finite


def _unpaired_objective(
    out: PairLogps,
    reference: torch.Tensor,
    reference_kl: torch.Tensor,
    desirable: torch.Tensor,
    algo: AlgoConfig,
    scale: StepScale,
    weight: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """KTO's objective of a micro-batch of labelled completions (TRL's losses and metric names), with the same finite
    stand-ins as the pairs': an example whose log-probs are not finite adds nothing, to the loss or to z0."""
    finite = torch.isfinite(out.chosen_logps.detach()) & torch.isfinite(out.rejected_logps.detach())
    finite = finite & torch.isfinite(reference) & torch.isfinite(reference_kl)
    zero = lambda x: torch.where(finite, x, 0.0)  # noqa: E731
    ((loss_type, _),) = loss_terms(algo)
    losses, rewards, z0 = unpaired_loss(
        zero(out.chosen_logps),
        zero(reference),
        zero(out.rejected_logps.detach()),
        zero(reference_kl),
        desirable,
        loss_type,
        algo.beta,
        algo.desirable_weight,
        algo.undesirable_weight,
        kl_mask=finite,
    )
    finite = finite & torch.isfinite(losses.detach())
    loss = weight * torch.where(finite, losses, 0.0).sum() / scale.pairs
    good, bad = finite & desirable, finite & ~desirable
    part = lambda x, mask: torch.where(mask, x.detach(), 0.0).sum()  # noqa: E731
    sums = {
        "pairs": finite.sum(),
        "loss": loss.detach(),
        "count/chosen": good.sum(),
        "count/rejected": bad.sum(),
        "rewards/chosen": part(rewards, good),
        "rewards/rejected": part(rewards, bad),
        "logps/chosen": part(out.chosen_logps, good),
        "logps/rejected": part(out.chosen_logps, bad),
        "kl": z0.detach(),
        "kl_batches": torch.ones((), device=z0.device),
        "entropy": out.entropy_sum.detach(),
        "tokens/chosen": part(out.chosen_tokens, finite),
        "tokens/rejected": part(out.rejected_tokens, finite),
    }
    return loss, {k: v * weight for k, v in sums.items()}, ~finite


def metric_floats(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """0-d metric tensors as numbers, read from the device at once (one synchronisation, not one a metric)."""
    if not sums:
        return {}
    values = torch.stack([v.detach().double().reshape(()) for v in sums.values()]).tolist()
    return dict(zip(sums, values))


PER_PAIR = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)
PER_CHOSEN_TOKEN = ("logits/chosen", "nll_loss", "kl/chosen", "mean_token_accuracy")


def add_metric_sums(parts: Iterable[dict]) -> dict:
    """Key-wise sums of the numbers (or 0-d tensors); other entries (a rank's non-finite pair positions) are not
    metrics."""
    total: dict = {}
    for part in parts:
        for k, v in part.items():
            if isinstance(v, (int, float, torch.Tensor)):
                total[k] = total.get(k, 0.0) + v
    return total


def reduce_metrics(parts: Iterable[dict[str, float]]) -> dict[str, float]:
    """Sum micro-batch metric sums over ranks and micro-batches, then divide by the right count."""
    total = add_metric_sums(parts)
    if "count/chosen" in total:
        return _reduce_unpaired(total)
    pairs = max(total.get("pairs", 0.0), 1.0)
    out = {"loss": total.get("loss", 0.0)}
    out.update({k: total[k] / pairs for k in PER_PAIR if k in total})
    out.update({k: total[k] / max(total["tokens/chosen"], 1.0) for k in PER_CHOSEN_TOKEN if k in total})
    if "logits/rejected" in total:
        out["logits/rejected"] = total["logits/rejected"] / max(total["tokens/rejected"], 1.0)
    if "entropy" in total:  # TRL's: over every completion token, chosen and rejected
        out["entropy"] = total["entropy"] / max(total["tokens/chosen"] + total["tokens/rejected"], 1.0)
    return out


def _reduce_unpaired(total: dict[str, float]) -> dict[str, float]:
    """KTO's step metrics (TRL's): rewards and log-probs averaged over the desirable and the undesirable examples,
    their margin when both are there, z0 as kl (averaged over micro-batches), the counts of each."""
    out = {"loss": total["loss"], "count/chosen": total["count/chosen"], "count/rejected": total["count/rejected"]}
    for side in ("chosen", "rejected"):
        if total[f"count/{side}"] > 0:
            for key in (f"rewards/{side}", f"logps/{side}"):
                out[key] = total[key] / total[f"count/{side}"]
    if "rewards/chosen" in out and "rewards/rejected" in out:
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
    out["kl"] = total["kl"] / max(total["kl_batches"], 1.0)
    out["entropy"] = total["entropy"] / max(total["tokens/chosen"] + total["tokens/rejected"], 1.0)
    return out
