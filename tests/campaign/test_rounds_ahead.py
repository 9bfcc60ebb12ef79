"""Rounds drawn ahead (online.async_rounds) without Ray: which rounds are asked for from which weights, and what a round
checkpoint keeps of them."""

from __future__ import annotations

from dpo_ray.campaign.rounds_ahead import SAVED, Drawn, RoundsAhead
from dpo_ray.workers.rollout import Sample


class Generation:
    """A pending generation whose samples name the round and the engines' weights that drew them."""

    def __init__(self, r: int, weights: int):
        self.launched_at, self.finished_at = float(r), None
        self.samples = [[Sample(f"round {r} from v{weights}", (r, weights), None)]]
        self.waited = False

    def result(self):
        self.waited, self.finished_at = True, self.launched_at + 0.5
        return self.samples


def run_rounds(staleness: int, rounds: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Drives RoundsAhead as the campaign does; returns (round, version) as each round is trained, and how many
    generations were under way whenever the weights changed."""
    weights, trained, under_way = 0, [], []
    ahead = RoundsAhead(staleness, rounds)
    for r in range(1, rounds + 1):
        ahead.launch(r, weights, lambda k, w=weights: Generation(k, w))
        drawn = ahead.take(r)
        assert drawn.samples[0][0].token_ids == (r, drawn.version)  # the version is the weights that drew it
        trained.append((r, drawn.version))
        ahead.settle()
        under_way.append(sum(not isinstance(d, Drawn) for d in ahead.rounds.values()))
        weights = r  # the sync: the engines now hold the policy after round r
    return trained, under_way


def test_staleness_0_draws_each_round_from_the_newest_policy_and_k_from_k_rounds_older_ones():
    assert run_rounds(0, 4)[0] == [(1, 0), (2, 1), (3, 2), (4, 3)]  # a synchronous run
    assert run_rounds(1, 4)[0] == [(1, 0), (2, 0), (3, 1), (4, 2)]
    assert run_rounds(2, 4)[0] == [(1, 0), (2, 0), (3, 0), (4, 1)]
    assert run_rounds(1, 4)[1] == [0, 0, 0, 0]  # the engines are idle whenever they take new weights


def test_the_rounds_drawn_ahead_go_into_a_checkpoint_and_come_back_identical(tmp_path):
    ahead = RoundsAhead(2, 5)
    ahead.launch(1, 0, lambda k: Generation(k, 0))
    ahead.take(1)
    ahead.save(tmp_path)  # waits for rounds 2 and 3 first
    loaded = RoundsAhead.load(tmp_path)
    assert sorted(loaded) == [2, 3] and all(d.version == 0 for d in loaded.values())
    assert [d.samples for d in loaded.values()] == [Generation(2, 0).samples, Generation(3, 0).samples]
    resumed = RoundsAhead(2, 5, loaded)
    resumed.launch(2, 1, lambda k: Generation(k, 1))  # round 4 is new; 2 and 3 are the saved ones
    assert [resumed.take(k).version for k in (2, 3, 4)] == [0, 0, 1]


def test_a_checkpoint_without_rounds_ahead_holds_no_file(tmp_path):
    ahead = RoundsAhead(0, 3)
    ahead.launch(1, 0, lambda k: Generation(k, 0))
    ahead.take(1)
    ahead.save(tmp_path)
    assert not (tmp_path / SAVED).exists() and RoundsAhead.load(tmp_path) == {}
