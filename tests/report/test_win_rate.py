"""The judged win rate against hand counts, and the length-controlled win rate against what length alone explains
and against the same penalised fit solved by torch's L-BFGS."""

from __future__ import annotations

import math
import random

import pytest
import torch

from dpo_ray.data.tournament import round_robin, tally
from dpo_ray.report.win_rate import LENGTH_RIDGE, length_controlled, win_rate
from dpo_ray.tasks.number_words import judge


def judged(prompt: str, candidate: str, baseline: str):
    """The comparison as the judge group runs it: candidate first, both orders."""
    answers = [candidate, baseline]
    orders = round_robin(answers)
    return tally(answers, orders, [judge(prompt, answers[i], answers[j]) for i, j in orders])


def test_the_win_rate_counts_and_interval_equal_a_hand_computation():
    """The stand-in rule judge: the right answer wins in both orders; two wrong answers as long are a position-biased
    disagreement (a tie); two wrong answers of other lengths get no verdict (left out); an empty answer loses; the
    same answer twice ties."""
    rows = [
        ("Write 41 in words.", "forty-one", "fourty-one"),  # won
        ("Write 19 in words.", "ninteen", "nineteen"),  # lost
        ("Write 7 in words.", "sevem", "seben"),  # wrong, as long: the orders disagree, a tie
        ("Write 8 in words.", "eigt", "eihgtt"),  # wrong, other lengths: no verdict
        ("Write 3 in words.", "", "thre"),  # empty: lost
        ("Write 2 in words.", "two", "two"),  # the same: a tie
    ]
    tallies = [judged(*row) for row in rows]
    result = win_rate(tallies, [c for _, c, _ in rows], [b for _, _, b in rows])
    scores = [1, 0, 0.5, 0, 0.5]  # mean 0.4; squared deviations .36 .16 .01 .16 .01 = .70
    half_width = 1.959964 * math.sqrt(0.70 / 4 / 5)  # z(97.5%) x the sample standard deviation over sqrt(n)
    assert (result.judged, result.unparseable) == (5, 1) and result.rate == pytest.approx(sum(scores) / 5)
    assert (result.low, result.high) == pytest.approx((0.4 - half_width, 0.4 + half_width))
    candidate_chars, baseline_chars = 9 + 7 + 5 + 4 + 0 + 3, 10 + 8 + 5 + 6 + 4 + 3
    assert result.length_ratio == pytest.approx(candidate_chars / baseline_chars)
    assert result.metrics()["eval/win_rate"] == result.rate


def test_when_length_alone_decides_the_length_controlled_win_rate_is_half_within_its_interval():
    """Candidates mostly longer, each verdict drawn from the length difference alone: the raw win rate is far above
    a half, the length-controlled one is a half within its interval."""
    rng = random.Random(0)
    differences = [rng.uniform(-20, 80) for _ in range(600)]
    sd = math.sqrt(sum(d * d for d in differences) / 600 - (sum(differences) / 600) ** 2)
    scores = [float(rng.random() < 1 / (1 + math.exp(-3 * math.tanh(d / sd)))) for d in differences]
    assert sum(scores) / len(scores) > 0.7
    rate, low, high = length_controlled(scores, differences)
    assert low < 0.5 < high and abs(rate - 0.5) < 0.06 and high - low < 0.25


def test_the_fit_is_the_penalised_maximum_likelihood_and_equal_lengths_give_the_plain_rate():
    rng = random.Random(1)
    differences = [rng.gauss(10, 30) for _ in range(200)]
    scores = [rng.choice([0.0, 0.5, 1.0, 1.0]) for _ in differences]
    rate, _, _ = length_controlled(scores, differences)
    d = torch.tensor(differences, dtype=torch.float64)
    x, y = torch.tanh(d / d.std(unbiased=False)), torch.tensor(scores, dtype=torch.float64)
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([theta], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)

    def loss():
        optimizer.zero_grad()
        logits = theta[0] + theta[1] * x
        value = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        value = value + LENGTH_RIDGE * theta[1] ** 2 / 2
        value.backward()
        return value

    optimizer.step(loss)
    assert rate == pytest.approx(torch.sigmoid(theta[0]).item(), abs=1e-7)
    same_length = length_controlled(scores, [0.0] * len(scores))
    assert same_length[0] == pytest.approx(sum(scores) / len(scores), abs=1e-12)
    assert length_controlled([1.0] * 5, [3.0, -2.0, 1.0, 0.0, 4.0]) == (1.0, 1.0, 1.0)  # no verdict varies
