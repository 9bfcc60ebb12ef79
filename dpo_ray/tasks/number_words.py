"""The "write a number in English words" task: canonical spelling, a flawed demonstrator, and its rule reward."""

from __future__ import annotations

import random
import re

ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

# The demonstrator's systematic mistakes: misspellings people really make, and a space for the hyphen.
FLAWS = [("forty", "fourty"), ("ninety", "ninty"), ("nineteen", "ninteen"), ("eighty", "eigthy"), ("-", " ")]


def to_words(n: int) -> str:
    """Canonical American spelling of 0 <= n < 1000 (no 'and')."""
    if not 0 <= n < 1000:
        raise ValueError(f"number out of range: {n}")
    if n < 20:
        return ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return TENS[tens] + (f"-{ONES[ones]}" if ones else "")
    hundreds, rest = divmod(n, 100)
    return f"{ONES[hundreds]} hundred" + (f" {to_words(rest)}" if rest else "")


def prompt(n: int) -> str:
    return f"Write {n} in words."


def flawed_words(n: int, rng: random.Random, flaw_rate: float) -> str:
    """A demonstration: canonical, or with probability flaw_rate one applicable systematic flaw."""
    words = to_words(n)
    applicable = [(right, wrong) for right, wrong in FLAWS if right in words]
    if applicable and rng.random() < flaw_rate:
        right, wrong = rng.choice(applicable)
        words = words.replace(right, wrong)
    return words


_NUMBER = re.compile(r"Write (\d+) in words\.")


def number_in(prompt_text: str) -> int:
    match = _NUMBER.search(prompt_text)
    if match is None:
        raise ValueError(f"not a number-words prompt: {prompt_text!r}")
    return int(match.group(1))


def reward(prompt_text: str, response: str) -> float:
    """Rule reward: 1.0 for the exact canonical spelling, else 0.0."""
    return float(response.strip() == to_words(number_in(prompt_text)))


def judge(prompt_text: str, response_a: str, response_b: str) -> str:
    """A stand-in pairwise judge with a real judge's failure modes: the right answer wins in either order, and of two
    wrong answers the first wins when they are as long (position bias: the swapped order disagrees) and otherwise the
    answer holds no verdict (unparseable)."""
    right_a, right_b = reward(prompt_text, response_a), reward(prompt_text, response_b)
    if right_a != right_b:
        return "A" if right_a > right_b else "B"
    if right_a:
        return "tie"
    return "A" if len(response_a) == len(response_b) else "Neither is right."
