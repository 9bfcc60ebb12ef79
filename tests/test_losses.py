import math

import pytest
import torch

from dpo_ray.losses import dpo_loss


def test_sigmoid_loss_is_ln2_when_policy_equals_reference():
    logps = torch.tensor([-3.0, -1.5, -7.25])
    losses, chosen, rejected = dpo_loss(logps, logps - 1, logps, logps - 1, beta=0.3)
    assert torch.allclose(losses, torch.full((3,), math.log(2.0)))
    assert torch.all(chosen == 0) and torch.all(rejected == 0)


def test_sigmoid_and_cdpo_formulas():
    pc, pr, rc, rr = map(torch.tensor, ([-1.0], [-4.0], [-2.0], [-3.0]))
    beta, eps = 0.5, 0.2
    delta = (-1.0 + 2.0) - (-4.0 + 3.0)  # chosen log-ratio minus rejected log-ratio = 2
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=beta)
    assert losses.item() == pytest.approx(math.log1p(math.exp(-beta * delta)))
    assert (chosen.item(), rejected.item()) == pytest.approx((0.5, -0.5))
    smoothed, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)
    expected = (1 - eps) * math.log1p(math.exp(-beta * delta)) + eps * math.log1p(math.exp(beta * delta))
    assert smoothed.item() == pytest.approx(expected)


def test_unknown_loss_and_missing_reference_are_errors():
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="unknown loss_type 'nope'"):
        dpo_loss(x, x, x, x, loss_type="nope")
    with pytest.raises(ValueError, match="needs reference"):
        dpo_loss(x, x, None, None)
