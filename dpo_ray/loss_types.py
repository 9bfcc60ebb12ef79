"""Which preference losses exist and what each one reads: the one table that validation, the loss functions and the
objective share. Torch-free, so that a loss and its options are checked when the config is composed."""

from __future__ import annotations

from dataclasses import dataclass

from .options import Bounds


@dataclass(frozen=True)
class LossType:
    reference_free: bool = False
    per_token: bool = False  # reads response lengths (length-normalised log-probs)
    label_smoothing: Bounds | None = None  # the algo.label_smoothing values it takes; None: it does not read it
    options: tuple[str, ...] = ()  # further algo.* options it reads
    f_divergence: bool = False  # built on the chosen-rejected score difference: takes algo.f_divergence_type (TRL)
    unpaired: bool = False  # KTO-style: one completion and its label per example (TRL's KTOTrainer), trained alone


_NOISE = Bounds(0, 1, high_open=True)
F_OPTIONS = ("f_divergence_type", "f_alpha_divergence_coef")  # the f-DPO regulariser of the score-difference losses
LOSS_TYPES: dict[str, LossType] = {
    "sigmoid": LossType(options=("cdpo_label_smoothing", *F_OPTIONS), f_divergence=True),
    "hinge": LossType(options=F_OPTIONS, f_divergence=True),
    "ipo": LossType(per_token=True, options=F_OPTIONS, f_divergence=True),
    "exo_pair": LossType(
        label_smoothing=Bounds(0, 1, low_open=True, high_open=True), options=F_OPTIONS, f_divergence=True
    ),
    "nca_pair": LossType(),
    "robust": LossType(label_smoothing=Bounds(0, 0.5, high_open=True), options=F_OPTIONS, f_divergence=True),
    "bco_pair": LossType(),
    "sppo_hard": LossType(),
    "aot": LossType(label_smoothing=_NOISE),
    "aot_unpaired": LossType(label_smoothing=_NOISE),
    "apo_zero": LossType(),
    "apo_down": LossType(),
    "discopop": LossType(options=("discopop_tau", *F_OPTIONS), f_divergence=True),
    "sft": LossType(reference_free=True, per_token=True, f_divergence=True),
    "sigmoid_norm": LossType(per_token=True, options=F_OPTIONS, f_divergence=True),
    "simpo": LossType(reference_free=True, per_token=True, label_smoothing=_NOISE, options=("simpo_gamma",)),
    "orpo": LossType(reference_free=True, per_token=True),
    "kto": LossType(unpaired=True, options=("desirable_weight", "undesirable_weight")),
    "apo_zero_unpaired": LossType(unpaired=True, options=("desirable_weight", "undesirable_weight")),
}
NLL_TERMS = ("sft", "orpo")  # terms whose weight adds to the chosen-response NLL coefficient


def loss_names(loss_type: str | list[str]) -> list[str]:
    """algo.loss_type's terms, in order: 'sigmoid,sft' or ['sigmoid', 'sft'] -> ['sigmoid', 'sft']."""
    joined = ",".join(loss_type) if isinstance(loss_type, list) else str(loss_type)
    return [t.strip() for t in joined.split(",") if t.strip()]


def loss_terms(loss_type: str, weights: list[float]) -> list[tuple[str, float]]:
    """(loss type, weight) of each term; empty weights mean 1.0 each (validated when the config is composed)."""
    names = loss_names(loss_type)
    return list(zip(names, list(weights) or [1.0] * len(names)))


def is_unpaired(loss_type: str | list[str]) -> bool:
    """Whether the loss trains on labelled completions (KTO) rather than pairs."""
    return any(LOSS_TYPES[n].unpaired for n in loss_names(loss_type) if n in LOSS_TYPES)


def takes_label_smoothing(names: list[str]) -> list[str]:
    return [n for n in names if LOSS_TYPES[n].label_smoothing is not None]
