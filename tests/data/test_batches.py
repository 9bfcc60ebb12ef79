from dpo_ray.data.batches import plan_micro_batches
from dpo_ray.data.collate import collate_pairs
from dpo_ray.data.tokenize import TokenizedPair


def test_plan_deals_round_robin_and_pads_every_rank_to_the_same_count():
    plan = plan_micro_batches(list(range(7)), world=2, micro_batch_size=2, per_rank=3)
    assert plan == [[[0, 2], [4, 6], []], [[1, 3], [5], []]]
    assert sorted(i for rank in plan for mb in rank for i in mb) == list(range(7))


def test_plan_refuses_more_pairs_than_slots():
    import pytest

    with pytest.raises(ValueError, match="need more than 1 micro-batches"):
        plan_micro_batches(list(range(9)), world=2, micro_batch_size=2, per_rank=1)


def test_collate_puts_chosen_rows_first_and_masks_only_completions():
    pairs = [TokenizedPair((1, 2), (3,), (4, 5)), TokenizedPair((6,), (7, 8), (9,))]
    batch = collate_pairs(pairs, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [6, 7, 8, 0], [1, 2, 4, 5], [6, 9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 1, 0, 0]]
