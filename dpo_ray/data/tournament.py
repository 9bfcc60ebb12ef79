"""A pairwise judge's round robin over one prompt's samples: every two distinct answers are judged in both orders
(position swap), a comparison counts only when both orders name the same winner, and each sample's score is the
number of comparisons it won. With m distinct non-empty answers a prompt costs m * (m - 1) judge calls."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .formats import is_empty

FIELDS = ("{prompt}", "{response_a}", "{response_b}")
DEFAULT_TEMPLATE = (
    "Which response answers the instruction better? Judge correctness first, then helpfulness; ignore which one "
    "comes first and how long each is.\n\n"
    "Instruction:\n{prompt}\n\n"
    "Response A:\n{response_a}\n\n"
    "Response B:\n{response_b}\n\n"
    "Reply with exactly one word: A, B, or tie."
)
# The verdict is the reply's first word, after markup or a "Response"/"Answer" label: A, B, or a tie word.
_VERDICT = re.compile(r"^[\s*_\"'`(\[]*(?:(?:response|answer|output)\s+)?(a|b|tie|tied|equal|same)\b", re.IGNORECASE)
TIE = "tie"


def judge_request(template: str, prompt: str, response_a: str, response_b: str) -> str:
    """The template with its three fields filled; by replacement, so braces in the texts stay as they are."""
    filled = template.replace("{response_a}", "\0a\0").replace("{response_b}", "\0b\0").replace("{prompt}", prompt)
    return filled.replace("\0a\0", response_a).replace("\0b\0", response_b)


def parse_verdict(answer: str) -> str | None:
    """'A', 'B' or 'tie' from the opening of a judge's answer; None when it opens with anything else."""
    match = _VERDICT.match(answer)
    if match is None:
        return None
    word = match.group(1).lower()
    return word.upper() if word in ("a", "b") else TIE


def first_indices(responses: Sequence[str]) -> dict[int, int]:
    """Each non-empty sample's index -> the index where its text first occurs (a repeated answer is judged once)."""
    first: dict[str, int] = {}
    return {j: first.setdefault(text, j) for j, text in enumerate(responses) if not is_empty(text)}


def round_robin(responses: Sequence[str]) -> list[tuple[int, int]]:
    """The (A, B) orders to judge: each two distinct non-empty answers, the earlier first and then swapped."""
    distinct = sorted(set(first_indices(responses).values()))
    return [order for k, i in enumerate(distinct) for j in distinct[k + 1 :] for order in ((i, j), (j, i))]


@dataclass
class Tally:
    """One prompt's tournament: each sample's wins, the (winner, loser) sample pairs both orders agreed on, and how
    the comparisons ended."""

    wins: list[float]
    beats: set[tuple[int, int]] = field(default_factory=set)
    agreed: int = 0  # both orders named the same winner
    ties: int = 0  # both orders said tie
    disagreed: int = 0  # the orders named different winners (position bias), or one a tie
    unparseable: int = 0  # one order's answer held no verdict: dropped, never guessed
    named: int = 0  # calls whose verdict named a response, A or B
    first_shown: int = 0  # of those, the calls that named A, the response shown first

    @property
    def comparisons(self) -> int:
        return self.agreed + self.ties + self.disagreed + self.unparseable


def tally(responses: Sequence[str], orders: Sequence[tuple[int, int]], answers: Sequence[str]) -> Tally:
    """Fold the judge's answers (one per order of round_robin) into wins; a repeated answer shares its first
    occurrence's wins and beats."""
    if len(orders) != len(answers):
        raise ValueError(f"{len(answers)} judge answers for {len(orders)} comparisons")
    verdicts = {order: parse_verdict(answer) for order, answer in zip(orders, answers)}
    named, first_shown = sum(v in ("A", "B") for v in verdicts.values()), sum(v == "A" for v in verdicts.values())
    result, won = Tally(wins=[0.0] * len(responses), named=named, first_shown=first_shown), set()
    for i, j in orders:
        if i > j:
            continue  # each comparison once, from its first order
        forward, swapped = verdicts[(i, j)], verdicts[(j, i)]
        if forward is None or swapped is None:
            result.unparseable += 1
            continue
        winner_forward = {"A": i, "B": j}.get(forward)
        winner_swapped = {"A": j, "B": i}.get(swapped)
        if forward == TIE and swapped == TIE:
            result.ties += 1
        elif winner_forward is not None and winner_forward == winner_swapped:
            result.agreed += 1
            won.add((winner_forward, j if winner_forward == i else i))
        else:
            result.disagreed += 1
    first = first_indices(responses)
    for a in first:
        result.wins[a] = float(sum(winner == first[a] for winner, _ in won))
    result.beats = {(a, b) for a in first for b in first if (first[a], first[b]) in won}
    return result


def judge_statistics(tallies: Sequence[Tally]) -> dict[str, float]:
    """A round's judge counts: calls, comparisons and how they ended, the agreement rate (the share of parsed
    comparisons whose two orders agreed, on a winner or a tie) and the first-shown share (of the verdicts naming a
    response, those naming A: each comparison is asked in both orders, so a judge free of position bias gives 0.5)."""
    agreed, ties = sum(t.agreed for t in tallies), sum(t.ties for t in tallies)
    disagreed, unparseable = sum(t.disagreed for t in tallies), sum(t.unparseable for t in tallies)
    named, first_shown = sum(t.named for t in tallies), sum(t.first_shown for t in tallies)
    parsed = agreed + ties + disagreed
    return {
        "judge/calls": 2 * (parsed + unparseable),
        "judge/comparisons": parsed + unparseable,
        "judge/agreed": agreed,
        "judge/ties": ties,
        "judge/disagreed": disagreed,
        "judge/unparseable": unparseable,
        "judge/agreement": (agreed + ties) / parsed if parsed else float("nan"),
        "judge/first_shown": first_shown / named if named else float("nan"),
    }
