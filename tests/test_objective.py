"""Micro-batch losses add up to the global mean however the pairs are split."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from dpo_ray.data.batches import step_scale
from dpo_ray.data.collate import collate_pairs
from dpo_ray.logprobs import forward_pairs
from dpo_ray.objective import micro_batch_objective, reduce_metrics
from dpo_ray.schema import AlgoConfig

from .conftest import make_pairs


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def wpo_log_weights(model, pairs, response: str) -> torch.Tensor:
    """WPO's eq. 2, one unpadded sequence at a time from full float64 logits: the mean over a response's tokens of
    log p(token) - log sum_v p_v^2."""
    weights = []
    for p in pairs:
        ids = torch.tensor([list(p.prompt_ids) + list(getattr(p, f"{response}_ids"))])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        rows = range(max(len(p.prompt_ids), 1), ids.shape[1])
        weights.append(sum(logp[j - 1, ids[0, j]] - torch.logsumexp(2 * logp[j - 1], -1) for j in rows) / len(rows))
    return torch.stack(weights)


def whole_batch_loss(loss_type, out, ref_c, ref_r, pair_weights=None):
    """The step loss written out over the whole batch (TRL's reductions), for each configuration below."""
    nll = -out.chosen_logps.sum() / out.chosen_tokens.sum()
    if loss_type == "sigmoid,sft+wpo":  # TRL's use_weighting: every term per pair times w_c w_r; rpo_alpha's NLL not
        d = (out.chosen_logps - ref_c) - (out.rejected_logps - ref_r)
        weighted_sft = -(out.chosen_logps * pair_weights).sum() / out.chosen_tokens.sum()
        return (-F.logsigmoid(0.2 * d) * pair_weights).mean() + 1.5 * weighted_sft + 0.7 * nll
    if loss_type == "sigmoid":  # with rpo_alpha=0.7
        return -F.logsigmoid(0.2 * ((out.chosen_logps - ref_c) - (out.rejected_logps - ref_r))).mean() + 0.7 * nll
    if loss_type == "hinge,sft":  # weights 0.5, 2.0
        return (
            0.5 * torch.relu(1 - 0.2 * ((out.chosen_logps - ref_c) - (out.rejected_logps - ref_r))).mean() + 2.0 * nll
        )
    avg_c, avg_r = out.chosen_logps / out.chosen_tokens, out.rejected_logps / out.rejected_tokens
    if loss_type == "simpo":
        return -F.logsigmoid(0.2 * (avg_c - avg_r) - 0.5).mean()
    odds = (avg_c - avg_r) - (torch.log1p(-torch.exp(avg_c)) - torch.log1p(-torch.exp(avg_r)))
    return nll - 0.2 * F.logsigmoid(odds).mean()  # orpo: TRL's ORPOTrainer


CONFIGS = {
    "sigmoid": AlgoConfig(beta=0.2, rpo_alpha=0.7),
    "hinge,sft": AlgoConfig(beta=0.2, loss_type="hinge,sft", loss_weights=[0.5, 2.0]),
    "simpo": AlgoConfig(beta=0.2, loss_type="simpo"),
    "orpo": AlgoConfig(beta=0.2, loss_type="orpo"),
    "sigmoid,sft+wpo": AlgoConfig(
        beta=0.2, loss_type="sigmoid,sft", loss_weights=[1.0, 1.5], rpo_alpha=0.7, use_weighting=True
    ),
}


@pytest.mark.parametrize("loss_type", list(CONFIGS))
def test_split_micro_batches_equal_the_global_mean(tiny_model_dir, loss_type):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    pairs = make_pairs(7, seed=2)
    ref_c, ref_r = torch.randn(7) - 20, torch.randn(7) - 20
    algo = CONFIGS[loss_type]
    free = loss_type in ("simpo", "orpo")
    if free:
        ref_c = ref_r = None

    out = forward_pairs(model, collate_pairs(pairs, 0))
    weights = None
    if algo.use_weighting:
        weights = torch.exp(wpo_log_weights(model, pairs, "chosen") + wpo_log_weights(model, pairs, "rejected"))
        assert torch.allclose(torch.exp(out.chosen_log_weight + out.rejected_log_weight).double(), weights, rtol=1e-4)
        weights = weights.float()
    expected = whole_batch_loss(loss_type, out, ref_c, ref_r, weights)
    expected.backward()
    whole = grads(model).clone()
    model.zero_grad()

    scale, parts, total = step_scale(pairs), [], 0.0
    for lo, hi in ((0, 3), (3, 4), (4, 7)):
        refs = (None, None) if free else (ref_c[lo:hi], ref_r[lo:hi])
        loss, metrics, _ = micro_batch_objective(
            forward_pairs(model, collate_pairs(pairs[lo:hi], 0)), *refs, algo, scale
        )
        loss.backward()
        parts.append(metrics)
        total += loss.item()
    assert abs(total - expected.item()) < 1e-5
    assert torch.allclose(grads(model), whole, atol=1e-6)
    merged = reduce_metrics(parts)
    assert abs(merged["loss"] - total) < 1e-6  # float32 sums against float64 ones: an ulp apart on some CPUs
    assert abs(merged["logps/chosen"] - out.chosen_logps.mean().item()) < 1e-4
    assert abs(merged["nll_loss"] - (-out.chosen_logps.sum() / out.chosen_tokens.sum()).item()) < 1e-5
    assert ("kl/chosen" in merged) != free


def test_filler_micro_batches_contribute_nothing(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    pairs = make_pairs(2)
    loss, metrics, _ = micro_batch_objective(
        forward_pairs(model, collate_pairs(pairs, 0)),
        torch.zeros(2),
        torch.zeros(2),
        AlgoConfig(rpo_alpha=1.0),
        step_scale(pairs),
        weight=0.0,
    )
    loss.backward()
    assert loss.item() == 0 and all(v == 0 for v in metrics.values())
    assert torch.count_nonzero(grads(model)) == 0


def test_a_non_finite_pair_adds_nothing_and_the_others_train_as_if_it_were_not_there(tiny_model_dir):
    """A NaN reference log-prob (as a corrupted cache gives) and an infinite one: those pairs are flagged and add no
    loss, gradient or metric; the rest give what the same pairs give without them, with no host synchronisation."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    pairs, algo = make_pairs(5, seed=3), AlgoConfig(rpo_alpha=0.5)
    scale = step_scale(pairs)
    ref_c, ref_r = torch.full((5,), -20.0), torch.full((5,), -21.0)
    ref_c[1], ref_r[3] = float("nan"), float("-inf")
    loss, metrics, bad = micro_batch_objective(forward_pairs(model, collate_pairs(pairs, 0)), ref_c, ref_r, algo, scale)
    loss.backward()
    got = grads(model).clone()
    model.zero_grad()
    keep = [0, 2, 4]
    expected, expected_metrics, none_bad = micro_batch_objective(
        forward_pairs(model, collate_pairs([pairs[i] for i in keep], 0)), ref_c[keep], ref_r[keep], algo, scale
    )
    expected.backward()
    assert bad.tolist() == [False, True, False, True, False] and not none_bad.any()
    assert torch.isfinite(loss) and abs(loss.item() - expected.item()) < 1e-6
    assert torch.isfinite(got).all() and torch.allclose(got, grads(model), atol=1e-6)
    assert metrics["pairs"] == 3
    for name in ("rewards/chosen", "rewards/margins", "logps/chosen", "nll_loss", "tokens/chosen", "kl/chosen"):
        assert abs(metrics[name].item() - expected_metrics[name].item()) < 1e-4, name


def test_kto_objective_takes_trls_mean_over_examples_and_reports_per_label_metrics():
    """One micro-batch of labelled completions: the loss is TRL's mean, an example whose log-probs are not finite
    adds nothing (to the loss or z0), and the metrics average over the desirable and undesirable examples."""
    from dpo_ray.data.batches import StepScale
    from dpo_ray.logprobs import PairLogps
    from dpo_ray.objective import micro_batch_objective, reduce_metrics
    from dpo_ray.schema import AlgoConfig

    from .test_losses import trl_kto

    logps = torch.tensor([-5.0, -7.0, -3.0, -9.0, float("nan")], dtype=torch.float64)
    kl = torch.tensor([-6.0, -6.5, -4.0, -8.0, -1.0], dtype=torch.float64)
    ref, ref_kl = logps.nan_to_num(-4.0) + 0.5, kl - 0.25
    labels = torch.tensor([True, False, True, False, True])
    zeros, ones = torch.zeros(5, dtype=torch.float64), torch.ones(5)
    out = PairLogps(logps, kl, ones * 2, ones * 3, *(torch.tensor(0.0),) * 4, zeros, zeros)
    algo = AlgoConfig(loss_type="kto", beta=0.2, desirable_weight=1.3)
    loss, sums, bad = micro_batch_objective(out, ref, ref_kl, algo, StepScale(4, 8), labels=labels)
    expected, z0 = trl_kto(
        logps[:4].tolist(),
        ref[:4].tolist(),
        kl[:4].tolist(),
        ref_kl[:4].tolist(),
        labels[:4].tolist(),
        "kto",
        0.2,
        1.3,
        1.0,
    )
    assert loss.item() == pytest.approx(expected, abs=1e-12) and bad.tolist() == [False] * 4 + [True]
    metrics = reduce_metrics([{k: float(v) for k, v in sums.items()}])
    assert (metrics["count/chosen"], metrics["count/rejected"]) == (2, 2)
    assert metrics["kl"] == pytest.approx(z0) and z0 == pytest.approx(0.25)
    assert metrics["rewards/chosen"] == pytest.approx(0.2 * -0.5) and metrics["logps/rejected"] == pytest.approx(-8.0)
    assert metrics["rewards/margins"] == pytest.approx(0.0)
