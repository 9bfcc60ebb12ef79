"""dpo-ray vs Hugging Face TRL's DPOTrainer on the same machine, model, pairs and batch settings (run by hand:
.venv/bin/pip install trl==1.16.0 --no-deps && .venv/bin/python bench/offline_vs_trl.py).

Both train the embedded task's pairs with the sigmoid loss (beta 0.1), batch 64 pairs, constant lr, float32, no
warmup. TRL runs in one process with 2 threads, in its default mode (a reference forward every step) and with
precomputed reference log-probs; dpo-ray runs through Ray with 2 ZeRO-3 ranks of 1 thread each (its default), padded
and prefix-shared, and with 1 rank of 2 threads (TRL's process shape). Reported: median training-step seconds (first step left out), pairs/s, the ratio to TRL's default,
and the first step's loss (ln 2 for both: policy == reference). Runs alternate A B A B."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def trl_run(model_path: str, train_file: str, steps: int, precompute: bool):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(2)
    times, losses = [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.began)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    config = DPOConfig(output_dir=tempfile.mkdtemp(prefix="trl-"), per_device_train_batch_size=64, max_steps=steps,
                       learning_rate=3e-4, lr_scheduler_type="constant", warmup_steps=0, beta=0.1, loss_type=["sigmoid"],
                       max_grad_norm=1.0, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                       precompute_ref_log_probs=precompute, dataloader_num_workers=0, seed=0)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_path), args=config, processing_class=tokenizer,
                         train_dataset=datasets.Dataset.from_json(train_file), callbacks=[Timer()])
    began = time.perf_counter()
    trainer.train()
    return times[1:], losses[0], time.perf_counter() - began


def dpo_ray_run(inputs, steps: int, layout: str, ranks: int = 2):
    from dpo_ray.campaign.offline import OfflineCampaign
    from dpo_ray.cli import compose

    cfg = compose(["progress=false", "algo=dpo", f"train.max_steps={steps}", "train.lr_scheduler=constant",
                   "train.warmup_ratio=0", "train.batch_size=64", "train.micro_batch_size=32", "reference.cache=false",
                   f"data.prefix_sharing={layout == 'prefix'}", f"output_dir={tempfile.mkdtemp(prefix='bench-')}",
                   f"cluster.policy_ranks={ranks}", f"cluster.torch_threads={2 // ranks}"])
    began = time.perf_counter()
    campaign = OfflineCampaign(cfg, inputs)
    result = campaign.run()
    first = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[1])
    return result.step_seconds[1:], first["loss"], time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import ray

    from dpo_ray.campaign.offline import prepare_inputs
    from dpo_ray.cli import compose

    inputs = prepare_inputs(compose(["progress=false"]))
    train_file = str(inputs.task.train_file)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    systems = {
        "TRL DPOTrainer (default)": lambda: trl_run(inputs.model_path, train_file, args.steps, False),
        "TRL DPOTrainer (precomputed ref)": lambda: trl_run(inputs.model_path, train_file, args.steps, True),
        "dpo-ray, 2 ranks, padded": lambda: dpo_ray_run(inputs, args.steps, "padded"),
        "dpo-ray, 2 ranks, prefix-shared": lambda: dpo_ray_run(inputs, args.steps, "prefix"),
        "dpo-ray, 1 rank x 2 threads, prefix-shared": lambda: dpo_ray_run(inputs, args.steps, "prefix", ranks=1),
    }
    results = {name: [] for name in systems}
    for _ in range(args.repeats):
        for name, run in systems.items():
            results[name].append(run())
    ray.shutdown()
    base = statistics.median(s for steps, _, _ in results["TRL DPOTrainer (default)"] for s in steps)
    print(f"\nembedded task, batch 64 pairs, {args.steps} steps x {args.repeats} runs, 2 CPUs\n")
    print("| system | median step s | pairs/s | x TRL default | first-step loss | run wall s (incl. reference) |")
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        median = statistics.median(s for steps, _, _ in runs for s in steps)
        print(f"| {name} | {median:.3f} | {64 / median:.0f} | {base / median:.2f} | {runs[0][1]:.4f} | "
              f"{statistics.median(w for _, _, w in runs):.1f} |")


if __name__ == "__main__":
    main()
