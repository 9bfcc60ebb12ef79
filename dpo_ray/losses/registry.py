"""The loss registry: every loss by TRL's name, with its kind, the options it reads and its paper. Torch-free, so that
the config's help and validation read it when a config is composed; each formula (paired.py, unpaired.py) is a
function registered against its name here with @formula."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from ..options import Bounds


class Kind(str, Enum):
    PAIRED = "paired"  # a chosen-rejected pair, scored against the reference's log-probs of both
    REFERENCE_FREE = "reference-free"  # a pair, no reference (no reference group is started)
    UNPAIRED = "unpaired"  # one completion and its desirable label (TRL's KTOTrainer), trained alone


F_OPTIONS = ("f_divergence_type", "f_alpha_divergence_coef")  # f-DPO's regulariser of the score-difference losses


@dataclass(frozen=True)
class Loss:
    name: str
    kind: Kind
    paper: str  # short citation: authors year, name (arXiv id)
    reads: tuple[str, ...] = ()  # the algo.* options its formula takes, by its keyword arguments
    label_smoothing: Bounds | None = None  # the algo.label_smoothing values it takes; None: it does not read it
    per_token: bool = False  # reads response lengths (length-normalised log-probs)
    f_divergence: bool = False  # built on the chosen-rejected score difference: takes algo.f_divergence_type (TRL)
    nll: bool = False  # its weight adds to the chosen-response NLL coefficient
    sorts_batch: bool = False  # sorts the pairs over the batch, so per-pair weights would misalign (TRL)

    @property
    def reference_free(self) -> bool:
        return self.kind is Kind.REFERENCE_FREE

    @property
    def options(self) -> tuple[str, ...]:
        """Every algo.* option it is handed besides beta and label_smoothing: its own, then f-DPO's."""
        return self.reads + (F_OPTIONS if self.f_divergence else ())


_NOISE = Bounds(0, 1, high_open=True)
_KTO_WEIGHTS = ("desirable_weight", "undesirable_weight")
_APO = "D'Oosterlinck et al. 2024, APO (2408.06266)"
_AOT = "Melnyk et al. 2024, AOT (2406.05882)"
LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss(
            "sigmoid",
            Kind.PAIRED,
            "Rafailov et al. 2023, DPO (2305.18290)",
            ("cdpo_label_smoothing",),
            f_divergence=True,
        ),
        Loss("hinge", Kind.PAIRED, "Zhao et al. 2023, SLiC-HF (2305.10425)", f_divergence=True),
        Loss("ipo", Kind.PAIRED, "Azar et al. 2023, IPO (2310.12036)", per_token=True, f_divergence=True),
        Loss(
            "exo_pair",
            Kind.PAIRED,
            "Ji et al. 2024, EXO (2402.00856)",
            label_smoothing=Bounds(0, 1, low_open=True, high_open=True),
            f_divergence=True,
        ),
        Loss("nca_pair", Kind.PAIRED, "Chen et al. 2024, NCA (2402.05369)"),
        Loss(
            "robust",
            Kind.PAIRED,
            "Chowdhury et al. 2024, robust DPO (2403.00409)",
            label_smoothing=Bounds(0, 0.5, high_open=True),
            f_divergence=True,
        ),
        Loss("bco_pair", Kind.PAIRED, "Jung et al. 2024, BCO (2404.04656)"),
        Loss("sppo_hard", Kind.PAIRED, "Wu et al. 2024, SPPO (2405.00675)"),
        Loss("aot", Kind.PAIRED, _AOT, label_smoothing=_NOISE, sorts_batch=True),
        Loss("aot_unpaired", Kind.PAIRED, _AOT, label_smoothing=_NOISE, sorts_batch=True),
        Loss("apo_zero", Kind.PAIRED, _APO),
        Loss("apo_down", Kind.PAIRED, _APO),
        Loss("discopop", Kind.PAIRED, "Lu et al. 2024, DiscoPOP (2406.08414)", ("discopop_tau",), f_divergence=True),
        Loss(
            "sft",
            Kind.REFERENCE_FREE,
            "Wang et al. 2024, MPO's weighted NLL term (2411.10442)",
            per_token=True,
            f_divergence=True,
            nll=True,
        ),
        Loss(
            "sigmoid_norm",
            Kind.PAIRED,
            "Lambert et al. 2024, Tulu 3's length-normalised DPO (2411.15124)",
            per_token=True,
            f_divergence=True,
        ),
        Loss(
            "simpo",
            Kind.REFERENCE_FREE,
            "Meng et al. 2024, SimPO (2405.14734)",
            ("simpo_gamma",),
            label_smoothing=_NOISE,
            per_token=True,
        ),
        Loss("orpo", Kind.REFERENCE_FREE, "Hong et al. 2024, ORPO (2403.07691)", per_token=True, nll=True),
        Loss("kto", Kind.UNPAIRED, "Ethayarajh et al. 2024, KTO (2402.01306)", _KTO_WEIGHTS),
        Loss("apo_zero_unpaired", Kind.UNPAIRED, _APO, _KTO_WEIGHTS),
    )
}
FORMULAS: dict[str, Callable] = {}  # each loss's formula, filled as paired.py and unpaired.py are imported


def formula(name: str) -> Callable[[Callable], Callable]:
    """Registers the decorated function as the formula of the registered loss `name`, once."""

    def register(fn: Callable) -> Callable:
        if name not in LOSSES or name in FORMULAS:
            raise ValueError(f"formula {fn.__name__}: {name!r} is {'taken' if name in FORMULAS else 'not in LOSSES'}")
        FORMULAS[name] = fn
        return fn

    return register


def names_of(kind: Kind) -> list[str]:
    return [name for name, loss in LOSSES.items() if loss.kind is kind]


def readers(option: str) -> list[str]:
    """The losses whose formulas take algo.<option> (label_smoothing and f-DPO's included)."""
    if option == "label_smoothing":
        return [name for name, loss in LOSSES.items() if loss.label_smoothing is not None]
    return [name for name, loss in LOSSES.items() if option in loss.options]


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
    return any(LOSSES[n].kind is Kind.UNPAIRED for n in loss_names(loss_type) if n in LOSSES)
