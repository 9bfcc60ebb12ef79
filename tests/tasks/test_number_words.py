import random

from dpo_ray.data.pairs import build_pairs
from dpo_ray.tasks.number_words import flawed_words, prompt, reward, to_words


def test_canonical_spelling():
    assert [to_words(n) for n in (0, 13, 19, 40, 42, 90, 100, 118, 999)] == [
        "zero",
        "thirteen",
        "nineteen",
        "forty",
        "forty-two",
        "ninety",
        "one hundred",
        "one hundred eighteen",
        "nine hundred ninety-nine",
    ]


def test_demonstrator_flaws_are_the_systematic_ones_and_the_reward_catches_them():
    rng = random.Random(0)
    seen = {flawed_words(n, rng, 1.0) for n in (41, 90, 19, 80, 23) for _ in range(20)}
    assert {"fourty-one", "forty one", "ninty", "ninteen", "eigthy", "twenty three"} <= seen
    assert flawed_words(5, rng, 1.0) == "five"  # nothing to get wrong
    assert reward(prompt(41), "forty-one") == 1.0 and reward(prompt(41), " forty-one ") == 1.0
    assert reward(prompt(41), "fourty-one") == 0.0


def test_build_pairs_takes_best_against_worst_and_drops_ties():
    pairs = build_pairs(["a", "b", "c"], [["x", "y", "z"], ["u", "v"], ["w"]], [[0.2, 1.0, 0.0], [1.0, 1.0], [1.0]])
    assert pairs == [{"prompt": "a", "chosen": "y", "rejected": "z", "chosen_reward": 1.0, "rejected_reward": 0.0}]
    assert build_pairs(["a"], [["x", "y"]], [[0.5, 0.4]], min_margin=0.2) == []
