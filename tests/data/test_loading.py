"""Every source users have loads the same rows: data-file directories split by name, .json holding JSON Lines,
compressed files, DatasetDict splits, and a dataset name from the local HF cache with the network off."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import subprocess
import sys

import datasets
import pytest

from dpo_ray.data.loading import iter_rows

ROWS = [{"prompt": f"Write {n} in words.", "chosen": f"c{n}", "rejected": f"r{n}"} for n in range(6)]


def lines(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def rows_of(spec) -> list:
    return [row for _, _, row in iter_rows(spec)]


def test_a_directory_of_data_files_is_split_by_their_names_as_datasets_does(tmp_path):
    (tmp_path / "train-00000.jsonl").write_bytes(lines(ROWS[:2]))
    (tmp_path / "train-00001.jsonl").write_bytes(lines(ROWS[2:4]))
    (tmp_path / "test.jsonl").write_bytes(lines(ROWS[4:]))
    (tmp_path / "README.md").write_text("not data")
    assert rows_of(str(tmp_path)) == ROWS[:4]
    assert rows_of(f"{tmp_path}:test") == ROWS[4:]
    with pytest.raises(ValueError, match=r"no split 'dev'; its splits: train, test \(name one: .*:train\)"):
        rows_of(f"{tmp_path}:dev")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.jsonl").write_bytes(lines(ROWS[:3]))
    (plain / "b.json").write_text(json.dumps(ROWS[3:]))
    assert rows_of(str(plain)) == ROWS


@pytest.mark.parametrize(
    "name, write",
    [
        ("rows.json", lambda data: data),  # JSON Lines in a .json file
        ("rows.jsonl.gz", gzip.compress),
        ("rows.jsonl.bz2", bz2.compress),
        ("rows.json.xz", lzma.compress),
        ("rows.json.zst", lambda data: __import__("zstandard").ZstdCompressor().compress(data)),
    ],
)
def test_json_lines_in_json_and_compressed_files_load_the_same_rows(tmp_path, name, write):
    (tmp_path / name).write_bytes(write(lines(ROWS)))
    assert rows_of(str(tmp_path / name)) == ROWS


def test_a_datasetdict_directory_reads_the_split_asked_for_or_train(tmp_path, caplog):
    prefs = datasets.DatasetDict(
        train_prefs=datasets.Dataset.from_list(ROWS[:4]), test_prefs=datasets.Dataset.from_list(ROWS[4:])
    )
    prefs.save_to_disk(str(tmp_path / "prefs"))
    with pytest.raises(ValueError, match=r"no 'train' split; its splits: train_prefs, test_prefs \(name one"):
        rows_of(str(tmp_path / "prefs"))
    assert rows_of(f"{tmp_path / 'prefs'}:test_prefs") == ROWS[4:]
    plain = datasets.DatasetDict(train=datasets.Dataset.from_list(ROWS[:4]), test=datasets.Dataset.from_list(ROWS[4:]))
    plain.save_to_disk(str(tmp_path / "plain"))
    caplog.set_level("INFO", logger="dpo_ray.data.loading")
    assert rows_of(str(tmp_path / "plain")) == ROWS[:4]
    assert "reading split 'train' (also there: ['train', 'test']" in caplog.text
    (tmp_path / "rows.jsonl").write_bytes(lines(ROWS))
    with pytest.raises(ValueError, match="names a split, which a directory or a dataset name has, not a file"):
        rows_of(f"{tmp_path / 'rows.jsonl'}:train")


def test_a_dataset_name_loads_from_the_local_hf_cache_with_the_network_off(tmp_path):
    """A dataset prepared in the HF cache once (here by hand, as `datasets` lays it out) loads by OWNER/NAME:SPLIT
    with HF_HUB_OFFLINE and HF_DATASETS_OFFLINE set; an unknown name says what was tried."""
    home = tmp_path / "hf"
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    (tmp_path / "train.jsonl").write_bytes(lines(ROWS))
    prepare = f"""
import datasets, json, pathlib, shutil
datasets.load_dataset("json", data_files={{"train": {str(tmp_path / "train.jsonl")!r}}})
built = next(pathlib.Path({str(home)!r}).glob("datasets/json/*/0.0.0/*/dataset_info.json")).parent
target = pathlib.Path({str(home)!r}) / "datasets/org___prefs/default/0.0.0/0"
target.mkdir(parents=True)
shutil.copy(built / "json-train.arrow", target / "prefs-train.arrow")
info = json.loads((built / "dataset_info.json").read_text().replace('"json"', '"prefs"'))
(target / "dataset_info.json").write_text(json.dumps(info))
"""
    subprocess.run([sys.executable, "-c", prepare], env=env, check=True, capture_output=True)
    read = (
        "import json, sys; from dpo_ray.data.loading import iter_rows; "
        "print(json.dumps([r for _, _, r in iter_rows(sys.argv[1])]))"
    )
    out = subprocess.run([sys.executable, "-c", read, "org/prefs:train"], env=env, capture_output=True, text=True)
    assert json.loads(out.stdout.splitlines()[-1]) == ROWS, out.stderr[-2000:]
    missing = subprocess.run([sys.executable, "-c", read, "org/absent"], env=env, capture_output=True, text=True)
    assert "org/absent: not a local file or directory, and `datasets` cannot load it" in missing.stderr


def test_bad_rows_are_row_errors_that_skip_skips_and_bad_files_name_their_cause(tokenizer, tmp_path):
    """A lone surrogate is a row error: raise names the row, skip keeps every valid row; a 20 MB response is cut
    before tokenising (fast, to the same ids), and said; a corrupt or empty Parquet file and a symlink loop name the
    file."""
    import time

    from dpo_ray.data.dataset import load_pairs
    from dpo_ray.data.errors import DataError
    from dpo_ray.data.tokenize import TokenizeSettings

    huge = {"prompt": "Write 1 in words.", "chosen": "one " * 5_000_000, "rejected": "won"}  # 20 MB
    path = tmp_path / "rows.jsonl"
    path.write_text(
        lines(ROWS[:2]).decode() + '{"prompt": "p", "chosen": "\\ud800", "rejected": "r"}\n' + json.dumps(huge) + "\n"
    )
    settings = TokenizeSettings(max_length=64)
    with pytest.raises(DataError, match=r"row 2: field 'chosen': not valid Unicode \('\\ud800' at character 0\)"):
        load_pairs([str(path)], tokenizer, settings)
    began = time.perf_counter()
    pairs, report = load_pairs([str(path)], tokenizer, settings, on_error="skip")
    assert len(pairs) == 3 and time.perf_counter() - began < 10
    assert list(report.dropped) == ["chosen: not valid Unicode ('\\ud800' at character 0)"]
    assert report.warnings["chosen over 4096 characters, cut before tokenising"] == 1
    short = dict(huge, chosen="one " * 200)  # long enough to be cut to max_length: the same ids as the 20 MB row
    path.write_text(json.dumps(short) + "\n")
    assert load_pairs([str(path)], tokenizer, settings)[0] == pairs[2:]
    kept = []
    for words in (5_000_000, 200):  # a 25 MB prompt keeps its end, as one cut to max_length by tokens does
        path.write_text(json.dumps({"prompt": "nine " * words + "Write 9 in words.", "chosen": "9", "rejected": "n"}))
        kept.append(load_pairs([str(path)], tokenizer, settings)[0])
    assert kept[0] == kept[1] and len(kept[0]) == 1
    assert tokenizer.decode(kept[0][0].prompt_ids).endswith("nine Write 9 in words.")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "empty.parquet").write_bytes(b"")
    for name in ("bad.parquet", "empty.parquet"):
        with pytest.raises(DataError, match=f"{name}: row 0: field '<parquet>': not a readable Parquet file"):
            rows_of(str(tmp_path / name))
    (tmp_path / "loop.jsonl").symlink_to(tmp_path / "loop.jsonl")
    with pytest.raises(FileNotFoundError, match="a symbolic link that leads nowhere"):
        rows_of(str(tmp_path / "loop.jsonl"))
