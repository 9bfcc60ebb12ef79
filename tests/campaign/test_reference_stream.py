"""Reference log-probs read while they are scored, with stand-in waves that record when they are waited for."""

from __future__ import annotations

import pytest

from dpo_ray.campaign.reference_stream import ReferenceStream, streamed


class Wave:
    """A wave's pending call: its pairs' scores (-i and -10 i for pair i; other pairs 0, as scores_by_pair leaves
    them), noting in `waited` when result() was asked for."""

    def __init__(self, name: str, indices: list[int], n: int, waited: list[str]):
        self.name, self.indices, self.n, self.waited = name, indices, n, waited
        self.launched_at, self.finished_at = float(len(waited)), None

    def result(self):
        self.waited.append(self.name)
        self.finished_at = 10.0 + len(self.waited)
        chosen, rejected = [0.0] * self.n, [0.0] * self.n
        for i in self.indices:
            chosen[i], rejected[i] = -float(i), -10.0 * i
        return chosen, rejected


def a_stream(waited: list[str], done=None) -> ReferenceStream:
    """5 pairs in 3 waves, sent in the order a first epoch reads them: [3, 0], [4, 1], [2]."""
    parts = {"a": [3, 0], "b": [4, 1], "c": [2]}
    return ReferenceStream(5, [(indices, Wave(name, indices, 5, waited)) for name, indices in parts.items()], done)


def test_a_pair_waits_for_its_wave_and_those_sent_before_it_only():
    waited: list[str] = []
    chosen, rejected = a_stream(waited).logps
    assert waited == []  # nothing waited for until read
    assert chosen[3] == -3.0 and waited == ["a"]
    assert rejected[0] == 0.0 and waited == ["a"]  # the same wave: no new wait
    assert rejected[1] == -10.0 and waited == ["a", "b"]
    assert chosen[-1] == -4.0 and waited == ["a", "b"]  # pair 4, in the second wave
    assert chosen[2] == -2.0 and waited == ["a", "b", "c"]
    with pytest.raises(IndexError):
        chosen[5]


def test_a_slice_or_finish_waits_for_the_whole_pass_and_done_gets_every_score_once():
    waited, done = [], []
    stream = a_stream(waited, done.append)
    chosen, rejected = stream.logps
    assert len(chosen) == 5 and stream.finished_at is None
    assert chosen[:2] == [0.0, -1.0] and waited == ["a", "b", "c"]
    assert stream.finish() == ([0.0, -1.0, -2.0, -3.0, -4.0], [0.0, -10.0, -20.0, -30.0, -40.0])
    assert list(rejected) == [0.0, -10.0, -20.0, -30.0, -40.0]
    assert done == [([0.0, -1.0, -2.0, -3.0, -4.0], [0.0, -10.0, -20.0, -30.0, -40.0])]
    assert waited == ["a", "b", "c"] and stream.finished_at == 13.0  # the last wave's end


def test_streamed_finds_the_stream_behind_log_probs_and_none_behind_lists():
    stream = a_stream([])
    assert streamed(stream.logps) is stream
    assert streamed(([0.0], [0.0])) is None and streamed(None) is None


def test_a_streamed_pass_is_cached_once_read_whole_and_a_second_call_reads_the_cache(run_config, tiny_model_dir):
    """ReferenceScorer with a stand-in reference group: stream=True sends a wave per WAVE micro-batches a rank without
    waiting, and once every score is read the pass is in the cache, which the next call for the same pairs returns."""
    from dpo_ray.campaign.reference import WAVE, ReferenceScorer
    from dpo_ray.workers.device import run_environment

    from ..conftest import make_pairs

    class Group:
        size = 1

        def __init__(self):
            self.sent: list[list[list[int]]] = []

        def submit_logps(self, pairs, part, watched=True):
            self.sent.append(part)
            return Wave(str(len(self.sent)), [i for g in part for i in g], len(pairs), [])

    spec, env = run_environment(run_config.cluster, run_config.model.dtype)
    scorer = ReferenceScorer(run_config, tiny_model_dir, spec, env)
    scorer.group = Group()
    pairs = make_pairs(WAVE + 2, seed=3)
    groups = [[i] for i in range(WAVE + 2)]
    (chosen, rejected), computed = scorer.logps(pairs, groups, stream=True)
    assert computed and scorer.group.sent == [groups[:WAVE], groups[WAVE:]]  # both waves sent, none read yet
    assert scorer.cache.load(scorer.key(pairs, groups)) is None
    assert chosen[:] == [-float(i) for i in range(WAVE + 2)]
    assert scorer.logps(pairs, groups, stream=True) == (
        ([-float(i) for i in range(WAVE + 2)], [-10.0 * i for i in range(WAVE + 2)]),
        False,
    )
    assert len(scorer.group.sent) == 2  # the second call came from the cache
