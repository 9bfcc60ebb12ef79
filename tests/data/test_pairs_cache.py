"""Tokenised pairs read back from the cache are the pairs tokenising makes; anything that made them, changed, makes
them anew; a damaged file is made anew. Many rows are tokenised in processes of their own, with the same pairs,
report and first error as one process."""

from __future__ import annotations

import json

import pytest

from dpo_ray.data import dataset
from dpo_ray.data.dataset import load_pairs
from dpo_ray.data.errors import DataError
from dpo_ray.data.loading import InMemorySource
from dpo_ray.data.pairs_cache import PairsCache
from dpo_ray.data.tokenize import TokenizeSettings

ALWAYS = TokenizeSettings(chat_template="always", max_length=24)


def rows(n: int, bad: int | None = None) -> list[dict]:
    made = [{"prompt": f"Write {k} in words.", "chosen": f"c{k}", "rejected": f"r{k} r"} for k in range(n)]
    made += [{"prompt": "p", "chosen": "same", "rejected": "same"}]  # dropped, counted
    if bad is not None:
        made[bad] = {"prompt": "p", "chosen": "c"}  # no rejected
    return made


def write(path, items) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return str(path)


def test_a_second_load_reads_the_pairs_back_and_a_change_makes_them_anew(tokenizer, tmp_path, monkeypatch):
    path = write(tmp_path / "d.jsonl", rows(30))
    cache = str(tmp_path / "cache")
    made = load_pairs([path], tokenizer, ALWAYS, cache_dir=cache)
    (stored,) = (tmp_path / "cache" / "tokenized_pairs").glob("*.npz")

    def no_tokenising(*args):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(dataset, "tokenize_rows", no_tokenising)
    assert load_pairs([path], tokenizer, ALWAYS, cache_dir=cache) == made
    monkeypatch.undo()
    kto = load_pairs([path], tokenizer, ALWAYS, cache_dir=cache, unpaired=True)  # labels come back too
    assert load_pairs([path], tokenizer, ALWAYS, cache_dir=cache, unpaired=True) == kto
    assert {p.label for p in kto[0]} == {True, False}
    for changed in (
        lambda: load_pairs([path], tokenizer, TokenizeSettings("always", max_length=8), cache_dir=cache),
        lambda: load_pairs([write(tmp_path / "d.jsonl", rows(31))], tokenizer, ALWAYS, cache_dir=cache),
    ):
        assert changed() != made
    assert len(list(stored.parent.glob("*.npz"))) == 4
    stored.write_bytes(b"not a cache file")
    write(tmp_path / "d.jsonl", rows(30))
    assert load_pairs([path], tokenizer, ALWAYS, cache_dir=cache) == made  # the damaged file made anew
    in_memory = InMemorySource(rows(5), "train_dataset")
    load_pairs([in_memory], tokenizer, ALWAYS, cache_dir=str(tmp_path / "other"))
    assert not (tmp_path / "other").exists()  # rows in memory have no bytes here to key on
    assert PairsCache(cache).load("0" * 32) is None


@pytest.mark.slow
def test_many_rows_tokenise_in_processes_as_in_one(tokenizer, tmp_path, monkeypatch):
    """Three chunks over two spawned processes: the same pairs and report as one process, the first bad row's error
    (in the second chunk) raised whole, and with data.on_error=skip the same rows skipped."""
    path = write(tmp_path / "d.jsonl", rows(70, bad=45))
    one = load_pairs([path], tokenizer, ALWAYS, on_error="skip")
    monkeypatch.setattr(dataset, "PARALLEL_ROWS", 20)
    monkeypatch.setattr(dataset, "CHUNK_ROWS", 25)
    monkeypatch.setattr(dataset.os, "cpu_count", lambda: 2)
    pools = []

    class Pool(dataset.ProcessPoolExecutor):
        def __init__(self, *args):
            super().__init__(*args)
            pools.append(args[0])

    monkeypatch.setattr(dataset, "ProcessPoolExecutor", Pool)
    many = load_pairs([path], tokenizer, ALWAYS, on_error="skip")
    assert pools == [2] and many[0] == one[0] and many[1] == one[1] and one[1].dropped["rejected: missing"] == 1
    with pytest.raises(DataError, match=r"row 45: field 'rejected': missing"):
        load_pairs([path], tokenizer, ALWAYS)
    # a row error raised in a tokenising process (an empty response) comes back whole, naming its row
    chats = rows(70) + [{"prompt": "p", "chosen": "c", "rejected": [{"role": "assistant", "content": "r"}]}]
    with pytest.raises(DataError, match=r"row 71: field"):
        load_pairs([write(tmp_path / "e.jsonl", chats)], tokenizer, TokenizeSettings("never", max_length=24))


def test_a_row_error_pickles_whole():
    import pickle

    error = pickle.loads(pickle.dumps(DataError("f.jsonl", 3, "chosen", "empty")))
    assert (str(error), error.row, error.field) == ("f.jsonl: row 3: field 'chosen': empty", 3, "chosen")
