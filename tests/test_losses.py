"""Every loss against a direct transcription of its formula (float64, per element, plain Python math)."""

import math

import pytest
import torch

from dpo_ray.losses.paired import preference_loss
from dpo_ray.losses.registry import LOSSES, Kind

N = 6
ls = lambda x: -math.log1p(math.exp(-x)) if x > -30 else x  # log sigmoid
sig = lambda x: 1 / (1 + math.exp(-x))


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    lc = torch.randint(1, 20, (N,), generator=g).double()
    lr = torch.randint(1, 20, (N,), generator=g).double()
    pc = -torch.rand(N, generator=g, dtype=torch.float64) * lc * 2  # log-probs: negative, about 0-2 nats a token
    pr = -torch.rand(N, generator=g, dtype=torch.float64) * lr * 2
    rc = pc + torch.randn(N, generator=g, dtype=torch.float64)
    rr = pr + torch.randn(N, generator=g, dtype=torch.float64)
    return pc, pr, rc, rr, lc, lr


def transcription(t, pc, pr, rc, rr, lc, lr, b, e, opts):
    pc, pr, rc, rr, lc, lr = (x.tolist() for x in (pc, pr, rc, rr, lc, lr))
    c = [x - y for x, y in zip(pc, rc)]
    r = [x - y for x, y in zip(pr, rr)]
    d = [x - y for x, y in zip(c, r)]
    if t == "aot":
        d = [x - y for x, y in zip(sorted(a - bb for a, bb in zip(pc, pr)), sorted(a - bb for a, bb in zip(rc, rr)))]
    if t == "aot_unpaired":
        d = [x - y for x, y in zip(sorted(c), sorted(r))]
    out = []
    for i in range(N):
        bd = b * d[i]
        ac, ar = pc[i] / lc[i], pr[i] / lr[i]
        out.append(
            {
                "sigmoid": lambda: (
                    -(1 - opts.get("cdpo_label_smoothing", 0)) * ls(bd) - opts.get("cdpo_label_smoothing", 0) * ls(-bd)
                ),
                "hinge": lambda: max(0.0, 1 - bd),
                "ipo": lambda: (c[i] / lc[i] - r[i] / lr[i] - 1 / (2 * b)) ** 2,
                "exo_pair": lambda: sig(bd) * (ls(bd) - math.log(1 - e)) + sig(-bd) * (ls(-bd) - math.log(e)),
                "nca_pair": lambda: -ls(b * c[i]) - 0.5 * ls(-b * c[i]) - 0.5 * ls(-b * r[i]),
                "robust": lambda: (-(1 - e) * ls(bd) + e * ls(-bd)) / (1 - 2 * e),
                "bco_pair": lambda: -ls(b * c[i]) - ls(-b * r[i]),
                "sppo_hard": lambda: (c[i] - 0.5 / b) ** 2 + (r[i] + 0.5 / b) ** 2,
                "aot": lambda: -(1 - e) * ls(bd) - e * ls(-bd),
                "aot_unpaired": lambda: -(1 - e) * ls(bd) - e * ls(-bd),
                "apo_zero": lambda: 1 - sig(b * c[i]) + sig(b * r[i]),
                "apo_down": lambda: sig(b * c[i]) + 1 - sig(bd),
                "discopop": lambda: (lambda m: -ls(bd) * (1 - m) + math.exp(-bd) * m)(sig(bd / opts["discopop_tau"])),
                "sigmoid_norm": lambda: -ls(b * (c[i] / lc[i] - r[i] / lr[i])),
                "sft": lambda: -pc[i] * N / sum(lc),
                "simpo": lambda: (
                    -(1 - e) * ls(b * (ac - ar) - opts["simpo_gamma"]) - e * ls(-(b * (ac - ar) - opts["simpo_gamma"]))
                ),
                "orpo": lambda: -b * ls((ac - ar) - (math.log(1 - math.exp(ac)) - math.log(1 - math.exp(ar)))),
            }[t]()
        )
    return out


SMOOTHING = {"exo_pair": 1e-3, "robust": 0.2, "aot": 0.1, "aot_unpaired": 0.1, "simpo": 0.1}
OPTIONS = {"sigmoid": {"cdpo_label_smoothing": 0.15}, "discopop": {"discopop_tau": 0.05}, "simpo": {"simpo_gamma": 0.7}}


@pytest.mark.parametrize("loss_type", [name for name, spec in LOSSES.items() if spec.kind is not Kind.UNPAIRED])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_equals_its_formula_and_has_finite_gradients(loss_type, seed):
    pc, pr, rc, rr, lc, lr = inputs(seed)
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    e, b, opts = SMOOTHING.get(loss_type, 0.0), 0.3, OPTIONS.get(loss_type, {})
    free = loss_type in ("simpo", "orpo", "sft")
    losses, chosen_rewards, rejected_rewards = preference_loss(
        pc,
        pr,
        None if free else rc,
        None if free else rr,
        loss_type=loss_type,
        beta=b,
        label_smoothing=e,
        chosen_lengths=lc,
        rejected_lengths=lr,
        **opts,
    )
    expected = transcription(loss_type, pc.detach(), pr.detach(), rc, rr, lc, lr, b, e, opts)
    assert losses.shape == (N,)
    for got, want in zip(losses.tolist(), expected):
        assert abs(got - want) <= 1e-9 * max(1.0, abs(want))
    losses.sum().backward()
    assert torch.isfinite(pc.grad).all() and (pr.grad is None or torch.isfinite(pr.grad).all())  # sft ignores rejected
    want_chosen = b * pc.detach() / lc if free else b * (pc.detach() - rc)
    assert torch.allclose(chosen_rewards, want_chosen)


def test_sigmoid_loss_is_ln2_when_policy_equals_reference():
    logps = torch.tensor([-3.0, -1.5, -7.25])
    losses, chosen, rejected = preference_loss(logps, logps - 1, logps, logps - 1, beta=0.3)
    assert torch.allclose(losses, torch.full((3,), math.log(2.0)))
    assert torch.all(chosen == 0) and torch.all(rejected == 0)


def test_ipo_and_sppo_hard_vanish_at_their_minimisers():
    b = 0.25
    lc, lr = torch.tensor([4.0]), torch.tensor([8.0])
    rc, rr = torch.tensor([-5.0]), torch.tensor([-9.0])
    # ipo: per-token log-ratio gap = 1 / (2 beta)
    pc = (rc + lc * (1 / (2 * b)) + lc * 0.1).requires_grad_(True)
    pr = (rr + lr * 0.1).requires_grad_(True)
    (loss,), _, _ = preference_loss(pc, pr, rc, rr, loss_type="ipo", beta=b, chosen_lengths=lc, rejected_lengths=lr)
    loss.backward()
    assert loss.item() == pytest.approx(0, abs=1e-12) and pc.grad.abs().item() < 1e-6
    # sppo_hard: chosen log-ratio 1/(2 beta), rejected -1/(2 beta)
    pc = (rc + 0.5 / b).requires_grad_(True)
    pr = (rr - 0.5 / b).requires_grad_(True)
    (loss,), _, _ = preference_loss(pc, pr, rc, rr, loss_type="sppo_hard", beta=b)
    loss.backward()
    assert loss.item() == pytest.approx(0, abs=1e-12) and pc.grad.abs().item() < 1e-6 and pr.grad.abs().item() < 1e-6


def test_missing_reference_and_unknown_option_are_errors():
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="needs reference"):
        preference_loss(x, x, None, None)
    with pytest.raises(TypeError, match="takes no option"):
        preference_loss(x, x, x, x, loss_type="hinge", discopop_tau=0.1)


@pytest.mark.parametrize(
    "f_type, alpha", [("forward_kl", 0.5), ("js_divergence", 0.5), ("alpha_divergence", 0.5), ("alpha_divergence", 2.0)]
)
@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "sigmoid_norm"])
def test_f_divergences_replace_each_log_ratio_by_trls_score(loss_type, f_type, alpha):
    """TRL's f-DPO scores, transcribed: forward_kl 1 - 1/t, js_divergence log(2t/(t+1)), alpha_divergence
    (t^(alpha-1) - 1)/(alpha-1) with t = pi/ref; the losses then read scores where they read log-ratios, and the
    rewards stay beta * log-ratios."""
    pc, pr, rc, rr, lc, lr = inputs(3)
    score = {
        "forward_kl": lambda u: 1 - 1 / math.exp(u),
        "js_divergence": lambda u: math.log(2 * math.exp(u) / (math.exp(u) + 1)),
        "alpha_divergence": lambda u: (math.exp(u) ** (alpha - 1) - 1) / (alpha - 1),
    }[f_type]
    b = 0.3
    losses, chosen_rewards, _ = preference_loss(
        pc, pr, rc, rr, loss_type=loss_type, beta=b, chosen_lengths=lc, rejected_lengths=lr,
        f_divergence_type=f_type, f_alpha_divergence_coef=alpha,
    )  # fmt: skip
    for i, got in enumerate(losses.tolist()):
        c, r = score(pc[i].item() - rc[i].item()), score(pr[i].item() - rr[i].item())
        want = {
            "sigmoid": lambda: -ls(b * (c - r)),
            "hinge": lambda: max(0.0, 1 - b * (c - r)),
            "ipo": lambda: (c / lc[i].item() - r / lr[i].item() - 1 / (2 * b)) ** 2,
            "sigmoid_norm": lambda: -ls(b * (c / lc[i].item() - r / lr[i].item())),
        }[loss_type]()
        assert abs(got - want) <= 1e-9 * max(1.0, abs(want))
    assert torch.allclose(chosen_rewards, b * (pc - rc))
    reverse, *_ = preference_loss(pc, pr, rc, rr, loss_type=loss_type, beta=b, chosen_lengths=lc, rejected_lengths=lr)
    assert not torch.allclose(losses, reverse)


def trl_kto(logps, ref, kl_logps, ref_kl, labels, loss_type, beta, w_good, w_bad):
    """TRL's KTOTrainer._compute_loss on one batch, per example in plain Python (float64): z0 the mean mismatched
    log-ratio, clamped at 0; the losses of desirable then undesirable examples, weighted; their mean."""
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    z0 = max(sum(k - rk for k, rk in zip(kl_logps, ref_kl)) / len(kl_logps), 0.0) if loss_type == "kto" else 0.0
    good, bad = [], []
    for lp, rp, label in zip(logps, ref, labels):
        r = lp - rp
        if loss_type == "kto":
            (good if label else bad).append(1 - sig(beta * (r - z0)) if label else 1 - sig(beta * (z0 - r)))
        else:
            (good if label else bad).append(1 - sig(beta * r) if label else sig(beta * r))
    losses = [w_good * x for x in good] + [w_bad * x for x in bad]
    return sum(losses) / len(losses), z0


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kto_losses_and_z0_equal_trls_formulas(loss_type, seed):
    from dpo_ray.losses.unpaired import unpaired_loss

    g = torch.Generator().manual_seed(seed)
    logps, ref = (
        -torch.rand(N, generator=g, dtype=torch.float64) * 20,
        -torch.rand(N, generator=g, dtype=torch.float64) * 20,
    )
    kl, ref_kl = logps + torch.randn(N, generator=g, dtype=torch.float64), logps.clone()
    labels = torch.rand(N, generator=g) < 0.6
    if seed == 2:
        kl = ref_kl - 1.0  # a negative mean mismatched log-ratio: z0 clamps at 0
    losses, rewards, z0 = unpaired_loss(logps, ref, kl, ref_kl, labels, loss_type, 0.3, 1.5, 0.7)
    expected, expected_z0 = trl_kto(
        logps.tolist(), ref.tolist(), kl.tolist(), ref_kl.tolist(), labels.tolist(), loss_type, 0.3, 1.5, 0.7
    )
    assert losses.mean().item() == pytest.approx(expected, abs=1e-9)
    assert z0.item() == pytest.approx(expected_z0, abs=1e-9) and (seed != 2 or z0.item() == 0.0)
    assert torch.allclose(rewards, 0.3 * (logps - ref), atol=1e-12)
