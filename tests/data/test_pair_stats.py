"""Pair statistics for the monitors, against counts done by hand."""

from __future__ import annotations

import pytest

from dpo_ray.data.pair_stats import pair_statistics, similarity
from dpo_ray.data.tokenize import TokenizedPair


def test_lengths_shares_and_label_noise_match_hand_counts():
    pairs = [
        TokenizedPair((1,), (5, 6, 7), (5, 6)),  # chosen longer
        TokenizedPair((1,), (5,), (8, 9, 10, 11)),  # rejected longer
        TokenizedPair((1,), (2, 3, 4, 5), (2, 3, 4, 5)),
    ]  # identical
    stats = pair_statistics(pairs, 0.9, reference=([-3.0, -1.0, -8.0], [-1.0, -8.0, -4.0]))
    assert stats["length/chosen"] == pytest.approx(8 / 3) and stats["length/rejected"] == pytest.approx(10 / 3)
    assert stats["pairs/chosen_longer_share"] == pytest.approx(1 / 3)
    assert stats["pairs/near_identical_share"] == pytest.approx(1 / 3)
    # per token: -1.0 < -0.5 (disagrees), -1.0 > -2.0, -2.0 < -1.0 (disagrees)
    assert stats["pairs/reference_disagrees"] == pytest.approx(2 / 3)
    assert "pairs/reference_disagrees" not in pair_statistics(pairs, 0.9)
    assert pair_statistics([], 0.9) == {}


def test_similarity_is_difflibs_ratio_on_tokens():
    assert similarity((1, 2, 3, 4), (1, 2, 3, 4)) == 1.0
    assert similarity((1, 2, 3, 4), (1, 2, 3, 9)) == pytest.approx(2 * 3 / 8)
    assert similarity((1, 2), (3, 4)) == 0.0
