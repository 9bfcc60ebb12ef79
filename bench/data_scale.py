"""Preference data at the size users load (run by hand): the time to tokenise N synthetic pairs of realistic length
(prompts 100-400 words, responses 50-300 words, VADER's lexicon as the vocabulary) into training pairs, and the peak
memory of the process that does it, for dpo-ray (one process, as before issue 39; processes per core; a second load
from the cache) against TRL's own preprocessing of the same file (`DPOTrainer._prepare_dataset`: `dataset.map` with
`dataset_num_proc`, its cache in a fresh directory). Each measurement runs in a fresh process, one after the other.

    .venv/bin/python bench/data_scale.py --sizes 10000 60000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

OURS = """
import json, resource, sys, time
from dpo_ray.data import dataset
from dpo_ray.data.tokenize import TokenizeSettings
from dpo_ray.workers.models import load_tokenizer
path, tokenizer_dir, cache, serial = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
if serial:
    dataset.PARALLEL_ROWS = 10**12
tokenizer = load_tokenizer(tokenizer_dir)
began = time.perf_counter()
pairs, report = dataset.load_pairs([path], tokenizer, TokenizeSettings(), cache_dir=cache or None)
seconds = time.perf_counter() - began
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
print(json.dumps({"seconds": seconds, "pairs": len(pairs), "peak_gib": peak, "children_peak_gib": children}))
"""

TRL = """
import json, resource, sys, time, types
import datasets
from transformers import AutoTokenizer
from trl import DPOConfig, DPOTrainer
path, tokenizer_dir, workdir, procs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
began = time.perf_counter()
rows = datasets.load_dataset("json", data_files=path, split="train", cache_dir=workdir)
args = DPOConfig(output_dir=workdir, dataset_num_proc=procs, report_to=[], use_cpu=True, bf16=False)
prepared = DPOTrainer._prepare_dataset(types.SimpleNamespace(_tokenizer=tokenizer), rows, tokenizer, args, "train")
seconds = time.perf_counter() - began
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
print(json.dumps({"seconds": seconds, "pairs": len(prepared), "peak_gib": peak, "children_peak_gib": children}))
"""


def synthetic(path: Path, n: int, seed: int = 0) -> None:
    from vaderSentiment import vaderSentiment

    lexicon = Path(vaderSentiment.__file__).with_name("vader_lexicon.txt").read_text(encoding="utf-8")
    words = [line.split("\t")[0] for line in lexicon.splitlines() if line and line[0].isalpha()]
    words += ["the", "a", "and", "of", "to", "in", "is", "it", "that", "this", "film", "movie"] * 40
    rng = random.Random(seed)

    def text(low: int, high: int) -> str:
        return " ".join(rng.choices(words, k=rng.randint(low, high))) + "."

    with path.open("w") as f:
        for _ in range(n):
            f.write(json.dumps({"prompt": text(100, 400), "chosen": text(50, 300), "rejected": text(50, 300)}) + "\n")


def measure(script: str, *arguments: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *arguments], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 60_000, 270_000])
    parser.add_argument("--data", default="runs/data_scale", help="where the synthetic files are kept")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="TRL's dataset_num_proc")
    parser.add_argument("--no-serial", action="store_true", help="leave out dpo-ray in one process (as before 39)")
    args = parser.parse_args()
    from dpo_ray.tasks.pretrained import ensure_pretrained

    tokenizer_dir = ensure_pretrained("smollm2-135m", str(Path("~/.cache/dpo-ray").expanduser()))
    Path(args.data).mkdir(parents=True, exist_ok=True)
    print("| pairs | file MB | system | seconds | pairs/s | peak RSS GiB (workers' peak) | vs TRL |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        path = Path(args.data) / f"pairs_{n}.jsonl"
        if not path.exists():
            synthetic(path, n)
        mb = path.stat().st_size / 1e6
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as trl_dir:
            results = {"TRL (dataset.map)": measure(TRL, str(path), tokenizer_dir, trl_dir, str(args.procs))}
            if not args.no_serial:
                results["dpo-ray, one process"] = measure(OURS, str(path), tokenizer_dir, "", "1")
            results["dpo-ray, a process per core"] = measure(OURS, str(path), tokenizer_dir, cache, "0")
            results["dpo-ray, second load (cache)"] = measure(OURS, str(path), tokenizer_dir, cache, "0")
        trl = results["TRL (dataset.map)"]["seconds"]
        for system, r in results.items():
            memory = f"{r['peak_gib']:.2f} ({r['children_peak_gib']:.2f})"
            rate, ratio = r["pairs"] / r["seconds"], trl / r["seconds"]
            print(f"| {n} | {mb:.0f} | {system} | {r['seconds']:.1f} | {rate:.0f} | {memory} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
