"""A judge's win rate of a model's answers against a baseline's, independent of the reward the model trains on: each
prompt's two answers are judged in both orders (position swap); the candidate wins when both orders name it, loses
when both name the baseline, and ties otherwise (worth a half). With its 95% interval and the length-controlled win
rate (AlpacaEval 2's idea, Dubois et al. 2024): a logistic fit of the verdict on the answers' length difference, read
at no difference, so that a judge's taste for longer answers does not pass for quality."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..data.formats import is_empty
from ..data.tournament import Tally

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
LENGTH_RIDGE = 1.0  # keeps the length slope finite when length alone decides every verdict


def outcome(tally: Tally, candidate: str, baseline: str) -> float | None:
    """A prompt's result from its judged comparison (candidate first, baseline second): 1 won, 0 lost, 0.5 tied (both
    orders said tie, or they disagreed, or the answers are the same); None when an order's answer held no verdict.
    An empty answer loses to any other."""
    if is_empty(candidate) or is_empty(baseline):
        return 0.5 if is_empty(candidate) and is_empty(baseline) else float(is_empty(baseline))
    if (0, 1) in tally.beats:
        return 1.0
    if (1, 0) in tally.beats:
        return 0.0
    return None if tally.unparseable else 0.5


def mean_interval(scores: Sequence[float]) -> tuple[float, float, float]:
    """The mean score and its 95% normal interval (the sample standard deviation over sqrt(n)), clipped to [0, 1]."""
    n = len(scores)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(scores) / n
    if n < 2:
        return mean, 0.0, 1.0
    error = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1) / n)
    return mean, max(0.0, mean - Z95 * error), min(1.0, mean + Z95 * error)


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def length_controlled(scores: Sequence[float], differences: Sequence[float]) -> tuple[float, float, float]:
    """sigmoid(a) of the fit P(win) = sigmoid(a + b * tanh(d / sd(d))) to the scores (a tie is a half), d each prompt's
    length difference (candidate - baseline), with a ridge LENGTH_RIDGE * b^2 / 2 on the slope; Newton's method on the
    penalised log-likelihood. The interval: sigmoid(a -+ 1.96 se(a)), se from the inverse of its negated Hessian."""
    n = len(scores)
    if len(set(scores)) < 2:  # no verdict varies, so no length explains any: the mean says it all
        return mean_interval(scores)
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / n)
    xs = [math.tanh(d / sd) if sd > 0 else 0.0 for d in differences]
    a = b = 0.0
    for _ in range(100):
        ps = [_sigmoid(a + b * x) for x in xs]
        ga = sum(y - p for y, p in zip(scores, ps))
        gb = sum((y - p) * x for y, p, x in zip(scores, ps, xs)) - LENGTH_RIDGE * b
        ws = [p * (1 - p) for p in ps]
        haa, hab = sum(ws), sum(w * x for w, x in zip(ws, xs))
        hbb = sum(w * x * x for w, x in zip(ws, xs)) + LENGTH_RIDGE
        det = haa * hbb - hab * hab
        step_a, step_b = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        a, b = a + step_a, b + step_b
        if abs(step_a) + abs(step_b) < 1e-12:
            break
    error = math.sqrt(hbb / det)
    return _sigmoid(a), _sigmoid(a - Z95 * error), _sigmoid(a + Z95 * error)


@dataclass(frozen=True)
class WinRate:
    rate: float
    low: float
    high: float
    length_controlled: float
    length_controlled_low: float
    length_controlled_high: float
    length_ratio: float  # the candidate's mean answer length over the baseline's, in characters
    judged: int  # prompts whose comparison had a verdict
    unparseable: int  # prompts an order's answer held no verdict for: left out

    def metrics(self) -> dict[str, float]:
        return {
            "eval/win_rate": self.rate,
            "eval/win_rate_low": self.low,
            "eval/win_rate_high": self.high,
            "eval/length_controlled_win_rate": self.length_controlled,
            "eval/length_controlled_win_rate_low": self.length_controlled_low,
            "eval/length_controlled_win_rate_high": self.length_controlled_high,
            "eval/length_ratio": self.length_ratio,
            "eval/win_rate_unparseable": float(self.unparseable),
        }


def win_rate(tallies: Sequence[Tally], candidates: Sequence[str], baselines: Sequence[str]) -> WinRate:
    """The candidate answers' win rate against the baselines', a prompt each (its tally: the two judged in both
    orders, candidate first)."""
    results = [outcome(t, c, b) for t, c, b in zip(tallies, candidates, baselines, strict=True)]
    kept = [(s, len(c) - len(b)) for s, c, b in zip(results, candidates, baselines) if s is not None]
    scores, differences = [s for s, _ in kept], [d for _, d in kept]
    rate, low, high = mean_interval(scores)
    controlled = length_controlled(scores, differences)
    base_length = sum(map(len, baselines))
    ratio = sum(map(len, candidates)) / base_length if base_length else math.nan
    return WinRate(rate, low, high, *controlled, ratio, len(scores), len(results) - len(scores))
