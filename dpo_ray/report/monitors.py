"""Failure-mode monitors from the DPO literature, each a number, a threshold (config `monitor.*`) and a verdict:
length hacking, over-optimisation (margin growing while held-out quality stalls; KL to the reference), and degenerate
pairs (ties, near-identical responses, label noise). Pure functions of a run's records, so the campaign can check them
after every round and the report after the run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..schema import MonitorConfig
from .records import RunRecords


@dataclass(frozen=True)
class Check:
    key: str  # logged as monitor/<key>
    monitor: str
    value: float | None  # None: the run has no data for it
    threshold: float
    tripped: bool
    detail: str

    @property
    def status(self) -> str:
        return "n/a" if self.value is None else ("WARNING" if self.tripped else "ok")


def _above(key: str, monitor: str, value: float | None, threshold: float, detail: str) -> Check:
    return Check(key, monitor, value, threshold, value is not None and value > threshold, detail)


def stalled_while_growing(margins: Sequence[float], quality: Sequence[float], window: int, tolerance: float) -> bool:
    """The margin rose at each of the last `window` points while quality never beat its value before them by
    tolerance."""
    if window < 1 or len(margins) < window + 1 or len(quality) < window + 1:
        return False
    m, q = margins[-window - 1 :], quality[-window - 1 :]
    return all(b > a for a, b in zip(m, m[1:])) and max(q[1:]) < q[0] + tolerance


def _series(rows: Sequence[dict], key: str) -> list[float]:
    return [row[key] for row in rows if row.get(key) is not None]


def round_checks(rounds: Sequence[dict], m: MonitorConfig) -> list[Check]:
    """Monitors of an online campaign's rounds (row 0: the starting policy), as of its last row. No label-noise check:
    sampled pairs are labelled by the reward alone, so the reference disagrees with about half of them by design."""
    trained = [row for row in rounds if row.get("round", 0) > 0]
    last = trained[-1] if trained else {}
    lengths = _series(rounds, "eval/length")
    growth = lengths[-1] / lengths[0] if len(lengths) > 1 and lengths[0] > 0 else None
    margins = _series(trained, "train/rewards/margins")
    quality = _series(trained, "eval/sampled_reward")
    over = None
    if len(margins) > m.plateau_window and len(quality) == len(margins):
        over = float(stalled_while_growing(margins, quality, m.plateau_window, m.plateau_tolerance))
    round_kl = m.kl_to == "round_reference"
    return [
        _above(
            "length_growth",
            "length hacking: sampled length / start",
            growth,
            m.length_growth,
            "held-out sampled responses, tokens",
        ),
        _above(
            "chosen_longer_share",
            "length hacking: chosen longer than rejected",
            last.get("pairs/chosen_longer_share"),
            m.chosen_longer_share,
            "share of the last round's pairs",
        ),
        _above(
            "over_optimisation",
            "over-optimisation: margin up, held-out reward flat",
            over,
            0.5,
            f"1 = the training margin rose for {m.plateau_window} rounds while the held-out sampled reward did not",
        ),
        _above(
            "kl",
            "over-optimisation: KL to the round's reference" if round_kl else "over-optimisation: KL to reference",
            _last(rounds, "eval/kl_to_round_reference" if round_kl else "eval/kl"),
            m.kl_max,
            "nats per held-out sampled response",
        ),
        _above(
            "tied_prompt_share",
            "degenerate pairs: tied prompts",
            last.get("pairs/tied_prompt_share"),
            m.tie_share,
            "share of the last round's prompts whose samples all tied",
        ),
        _above(
            "near_identical_share",
            "degenerate pairs: near-identical",
            last.get("pairs/near_identical_share"),
            m.near_identical_share,
            f"share of the last round's pairs with similarity >= {m.near_identical_ratio}",
        ),
    ]


def offline_checks(records: RunRecords, m: MonitorConfig) -> list[Check]:
    """Monitors of an offline run: its pair data, and its held-out evaluations."""
    train, held_out = records.data_stats.get("train", {}), records.data_stats.get("eval", {})
    margins = _series(records.evals, "eval_rewards/margins")
    accuracy = _series(records.evals, "eval_rewards/accuracies")
    over = (
        float(stalled_while_growing(margins, accuracy, m.plateau_window, m.plateau_tolerance))
        if len(margins) > m.plateau_window and len(margins) == len(accuracy)
        else None
    )
    return [
        _above(
            "chosen_longer_share",
            "length hacking: chosen longer than rejected",
            train.get("pairs/chosen_longer_share"),
            m.chosen_longer_share,
            "share of the training pairs",
        ),
        _above(
            "over_optimisation",
            "over-optimisation: margin up, held-out accuracy flat",
            over,
            0.5,
            f"1 = the held-out margin rose over {m.plateau_window} evaluations while held-out accuracy did not",
        ),
        _above(
            "near_identical_share",
            "degenerate pairs: near-identical",
            train.get("pairs/near_identical_share"),
            m.near_identical_share,
            f"share of the training pairs with similarity >= {m.near_identical_ratio}",
        ),
        _above(
            "label_noise",
            "label noise: reference prefers rejected (noisy or swapped labels?)",
            held_out.get("pairs/reference_disagrees"),
            m.label_noise,
            "share of the held-out pairs, per-token log-prob",
        ),
    ]


def _last(rows: Sequence[dict], key: str) -> float | None:
    values = _series(rows, key)
    return values[-1] if values else None


def run_checks(records: RunRecords, m: MonitorConfig) -> list[Check]:
    return round_checks(records.rounds, m) if records.rounds else offline_checks(records, m)


def warnings(checks: Sequence[Check]) -> list[str]:
    return [f"{c.monitor}: {c.value:.3g} > {c.threshold:g} ({c.detail})" for c in checks if c.tripped]


def as_metrics(checks: Sequence[Check]) -> dict[str, float]:
    """Each monitor's value as monitor/<key>, and monitor/alerts: how many trip."""
    metrics = {f"monitor/{c.key}": c.value for c in checks if c.value is not None}
    metrics["monitor/alerts"] = float(sum(c.tripped for c in checks))
    return metrics
