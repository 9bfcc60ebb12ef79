"""The pairwise judge's tournament: verdicts read from answers, the round robin in both orders, and what is kept."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from dpo_ray.data.tournament import (
    DEFAULT_TEMPLATE,
    judge_request,
    judge_statistics,
    parse_verdict,
    round_robin,
    tally,
)


@pytest.mark.parametrize(
    "answer, verdict",
    [
        ("A", "A"),
        (" b.", "B"),
        ("**A**", "A"),
        ("Response B is better", "B"),
        ("Tie", "tie"),
        ("equal", "tie"),
        ('"A"', "A"),
        ("Neither is right.", None),
        ("", None),
        ("Both", None),
        ("AB", None),
        ("The answer is A", None),  # a verdict is the opening word: later words are not guessed at
    ],
)
def test_the_verdict_is_the_answers_opening_word_or_nothing(answer, verdict):
    assert parse_verdict(answer) == verdict


def test_requests_fill_the_template_by_replacement_so_braces_in_texts_stay():
    text = judge_request("P={prompt} A={response_a} B={response_b}", "x {response_b}", "{prompt}", "a}{")
    assert text == "P=x {response_b} A={prompt} B=a}{"
    for field in ("{prompt}", "{response_a}", "{response_b}"):
        assert DEFAULT_TEMPLATE.count(field) == 1


def test_the_round_robin_judges_each_two_distinct_answers_in_both_orders():
    assert round_robin(["x", "y", "x", "", "z"]) == [(0, 1), (1, 0), (0, 4), (4, 0), (1, 4), (4, 1)]
    assert round_robin(["x", "x"]) == [] and round_robin(["x", " "]) == []
    m = 5
    assert len(round_robin([str(i) for i in range(m)])) == m * (m - 1)


def brute_force(responses, answers):
    """Each unordered pair of distinct answers judged both ways, counted without the tally's index bookkeeping."""
    texts = sorted({t for t in responses if t.strip()}, key=responses.index)
    wins, won, counts = {t: 0.0 for t in texts}, set(), {"agreed": 0, "ties": 0, "disagreed": 0, "unparseable": 0}
    for a, b in itertools.combinations(texts, 2):
        first, second = parse_verdict(answers[(a, b)]), parse_verdict(answers[(b, a)])
        if first is None or second is None:
            counts["unparseable"] += 1
        elif first == second == "tie":
            counts["ties"] += 1
        elif (first, second) in (("A", "B"), ("B", "A")):
            winner, loser = (a, b) if first == "A" else (b, a)
            wins[winner] += 1
            won.add((winner, loser))
            counts["agreed"] += 1
        else:
            counts["disagreed"] += 1
    return wins, won, counts


def test_the_tally_matches_a_brute_force_count_on_random_judges():
    rng = random.Random(0)
    for _ in range(200):
        responses = [rng.choice(["x", "y", "zz", "w", "", "vvv"]) for _ in range(rng.randint(2, 6))]
        table = {(a, b): rng.choice(["A", "B", "tie", "Neither", "b)"]) for a in responses for b in responses}
        orders = round_robin(responses)
        result = tally(responses, orders, [table[(responses[i], responses[j])] for i, j in orders])
        wins, won, counts = brute_force(responses, table)
        assert result.wins == [wins.get(t, 0.0) for t in responses]
        assert result.beats == {
            (i, j) for i, a in enumerate(responses) for j, b in enumerate(responses) if (a, b) in won
        }
        assert (result.agreed, result.ties, result.disagreed, result.unparseable) == tuple(counts.values())
        assert result.comparisons == len(orders) // 2


def test_a_position_biased_judge_agrees_on_nothing_and_the_statistics_say_so():
    responses = ["x", "y", "z"]
    orders = round_robin(responses)
    biased = tally(responses, orders, ["A"] * len(orders))  # always the first shown
    assert biased.wins == [0.0, 0.0, 0.0] and biased.beats == set() and biased.disagreed == 3
    fair = tally(responses, orders, ["A" if i < j else "B" for i, j in orders])  # the earlier sample always wins
    assert fair.wins == [2.0, 1.0, 0.0] and fair.beats == {(0, 1), (0, 2), (1, 2)}
    stats = judge_statistics([biased, fair, tally(["x", "y"], [(0, 1), (1, 0)], ["tie", "??"])])
    assert stats == {
        "judge/calls": 14,
        "judge/comparisons": 7,
        "judge/agreed": 3,
        "judge/ties": 0,
        "judge/disagreed": 3,
        "judge/unparseable": 1,
        "judge/agreement": 0.5,
        "judge/first_shown": 9 / 12,  # the biased judge's 6 A of 6, the fair one's 3 A of 6; a tie names neither
    }
    assert fair.first_shown == 3 and fair.named == 6  # a judge free of position bias names A in half its verdicts
    assert math.isnan(judge_statistics([])["judge/agreement"])
    assert math.isnan(judge_statistics([])["judge/first_shown"])
    with pytest.raises(ValueError, match="2 judge answers for 4 comparisons"):
        tally(["x", "y", "z"], orders[:4], ["A", "B"])
