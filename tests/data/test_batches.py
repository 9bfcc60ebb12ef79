import pytest

from dpo_ray.data.batches import plan_micro_batches
from dpo_ray.data.collate import BatchLayout, balance_rows, collate_pairs
from dpo_ray.data.tokenize import TokenizedPair


def test_plan_deals_round_robin_and_pads_every_rank_to_the_same_count():
    plan = plan_micro_batches(list(range(7)), world=2, micro_batch_size=2, per_rank=3)
    assert plan == [[[0, 2], [4, 6], []], [[1, 3], [5], []]]
    assert sorted(i for rank in plan for mb in rank for i in mb) == list(range(7))


def test_plan_refuses_more_pairs_than_slots():
    with pytest.raises(ValueError, match="need more than 1 micro-batches"):
        plan_micro_batches(list(range(9)), world=2, micro_batch_size=2, per_rank=1)


PAIRS = [TokenizedPair((1, 2), (3,), (4, 5)), TokenizedPair((6,), (7, 8), (9,))]


def test_padded_rows_put_chosen_first_and_index_each_completion_token_and_its_predictor():
    batch = collate_pairs(PAIRS, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [6, 7, 8, 0], [1, 2, 4, 5], [6, 9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    # flat positions (row * 4 + column) of completion tokens; each predicted by the position before it
    assert batch["target_index"].tolist() == [2, 5, 6, 10, 11, 13]
    assert batch["predictor_index"].tolist() == [1, 4, 5, 9, 10, 12]
    assert batch["sequence_ids"].tolist() == [0, 1, 1, 2, 2, 3]


def test_packed_row_restarts_positions_and_blocks_attention_across_sequences():
    batch = collate_pairs(PAIRS, 0, BatchLayout("packed", pack_length=16))
    assert batch["input_ids"].tolist() == [[1, 2, 3, 1, 2, 4, 5, 6, 7, 8, 6, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 0, 1]]
    mask = batch["attention_mask"][0, 0]
    assert mask[5].tolist() == [False] * 3 + [True] * 3 + [False] * 6  # rejected sees its own prompt copy only
    assert batch["target_index"].tolist() == [2, 5, 6, 8, 9, 11] and batch["sequence_ids"].tolist() == [
        0,
        2,
        2,
        1,
        1,
        3,
    ]
    eager = collate_pairs(PAIRS, 0, BatchLayout("packed", pack_length=16, attention="eager"))["attention_mask"]
    assert eager.dtype.is_floating_point and eager[0, 0, 5, 0] < -1e30 and eager[0, 0, 5, 3] == 0


def test_balancer_never_splits_a_pair_and_leaves_an_oversized_pair_alone():
    assert balance_rows([5, 3, 4, 12, 4], capacity=8) == [[3], [0], [2, 1], [4]]
    assert balance_rows([4, 4], capacity=8) == [[0, 1]]  # fills a row exactly
    assert balance_rows([3, 3, 2, 2, 2], capacity=6) == [[0, 2, 4], [1, 3]]  # least-filled first: 7 and 5


def test_many_sequences_in_narrow_rows_keep_every_real_token_visible():
    pairs = [TokenizedPair((5,), (6,), (7,)) for _ in range(9)]  # 18 sequences, rows 2 tokens wide
    assert collate_pairs(pairs, 0)["attention_mask"].sum().item() == 36


def test_prefix_sharing_lays_each_prompt_out_once_and_scores_both_responses_from_its_last_token():
    batch = collate_pairs(PAIRS, 0, BatchLayout("prefix_shared", pack_length=64))
    # pair 0 (prompt 1 2, chosen 3, rejected 4 5) then pair 1 (prompt 6, chosen 7 8, rejected 9)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 2, 3, 0, 1, 2, 1]]  # rejected restarts at the prompt's end
    assert batch["target_index"].tolist() == [2, 3, 4, 6, 7, 8]
    assert batch["predictor_index"].tolist() == [1, 1, 3, 5, 6, 5]  # first rejected token: the last prompt token
    mask = batch["attention_mask"][0, 0]
    assert mask[3].tolist() == [True, True, False, True] + [False] * 5  # rejected sees prompt, not chosen
    assert mask[8].tolist() == [False] * 5 + [True, False, False, True]
