"""A tokenised pair holds its ids at 4 bytes a token (tuples of Python ints took ~36), reads them back as the tuples
it was given, and crosses processes (pickling) at that size."""

from __future__ import annotations

import pickle
import random
import tracemalloc

import pytest

from dpo_ray.data.tokenize import TokenizedPair


def test_a_pair_reads_back_what_it_was_given():
    pair = TokenizedPair([5, 6, 7], (70_000, 8), (), label=False)
    assert (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids, pair.label) == ((5, 6, 7), (70_000, 8), (), False)
    assert (pair.prompt_len, pair.chosen_len, pair.rejected_len) == (3, 2, 0)
    assert pair.tokens == 2 * 3 + 2 + 0  # the prompt once per response
    assert pair == TokenizedPair((5, 6, 7), [70_000, 8], [], False) and pair != TokenizedPair(
        (5, 6), (7, 70_000, 8), ()
    )
    assert len({pair, TokenizedPair((5, 6, 7), (70_000, 8), (), False)}) == 1
    with pytest.raises(AttributeError, match="immutable"):
        pair.label = True


def random_pairs(n: int, tokens: int) -> list[tuple]:
    rng = random.Random(0)
    ids = lambda k: tuple(rng.randrange(300, 50_000) for _ in range(k))  # noqa: E731  (past the small-int cache)
    return [(ids(tokens // 2), ids(tokens // 4), ids(tokens // 4)) for _ in range(n)]


def held_bytes(make) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = make()  # noqa: F841  (alive while measured)
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_a_pair_holds_four_bytes_a_token_and_pickles_at_that_size():
    n, tokens = 200, 1000
    # the same ids as tuples of ints, measured the same way: a pointer and an int object a token
    as_tuples = held_bytes(lambda: random_pairs(n, tokens)) / (n * tokens)
    as_pairs = held_bytes(lambda: [TokenizedPair(*part) for part in random_pairs(n, tokens)]) / (n * tokens)
    assert as_tuples > 30 and as_pairs < 4.5, (as_tuples, as_pairs)
    parts = random_pairs(1, tokens)
    pair = TokenizedPair(*parts[0])
    assert len(pickle.dumps(pair)) < 4 * tokens + 200
    assert pickle.loads(pickle.dumps(pair)) == pair and pickle.loads(pickle.dumps(pair)).chosen_ids == parts[0][1]
