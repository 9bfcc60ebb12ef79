"""The learning-rate schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dpo_ray.workers.deepspeed_setup import lr_factor, warmup_length


def test_warmup_in_steps_makes_the_schedule_independent_of_the_horizon():
    assert [lr_factor(s, 10, 0.2, "cosine") for s in (0, 1, 2)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    short = [lr_factor(s, 20, 2, "constant") for s in range(5)]
    long = [lr_factor(s, 200, 2, "constant") for s in range(5)]
    assert short == long == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 1.0])
    assert lr_factor(10, 10, 0.0, "linear") == 0.0
    assert lr_factor(5, 10, 0, "linear") == pytest.approx(0.5)


def test_warmup_below_one_is_a_share_of_all_steps_and_whole_numbers_are_steps():
    assert warmup_length(0.1, 27) == 3 and warmup_length(0.0, 27) == 0
    assert warmup_length(1, 27) == 1 and warmup_length(2.0, 1000) == 2


@pytest.mark.parametrize(
    "name, kwargs, factor",
    [
        # transformers' formulas, transcribed: warmup s/w from 0, then p = (s - w) / (total - w)
        ("cosine_with_min_lr", {"min_lr_rate": 0.1}, lambda p: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))),
        ("constant_with_warmup", {}, lambda p: 1.0),
        ("polynomial", {"power": 2.0, "lr_end": 0.0}, lambda p: (1 - p) ** 2),
    ],
)
def test_transformers_schedulers_run_by_name_with_their_arguments(name, kwargs, factor):
    import torch

    from dpo_ray.schema import TrainConfig
    from dpo_ray.workers.deepspeed_setup import scheduler_factory

    train = TrainConfig(lr=1.0, lr_scheduler=name, lr_scheduler_kwargs=kwargs, warmup_steps=2)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = scheduler_factory(train, total_steps=10)(optimizer)
    got = []
    for _ in range(10):
        got.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert got == pytest.approx([0.0, 0.5] + [factor((s - 2) / 8) for s in range(2, 10)])


def test_cpu_adam_builds_once_per_kind_of_cpu(tmp_path):
    """DeepSpeed builds CPU Adam with -march=native: nodes whose CPUs match share a build, another CPU gets its own."""
    from dpo_ray.workers.deepspeed_setup import extensions_dir

    def cpu(name: str, flags: str) -> str:
        path = tmp_path / f"{name}-{flags}"
        path.write_text("".join(f"processor\t: {i}\nmodel name\t: {name}\nflags\t: {flags}\n\n" for i in range(4)))
        return str(path)

    sapphire = extensions_dir("/cache", cpu("Xeon 8480", "avx2 avx512f amx_bf16"))
    assert sapphire == extensions_dir("/cache", cpu("Xeon 8480", "avx2 avx512f amx_bf16"))
    assert sapphire.parent == Path("/cache/torch_extensions")
    assert sapphire != extensions_dir("/cache", cpu("EPYC 7763", "avx2"))
    assert sapphire != extensions_dir("/cache", cpu("Xeon 8480", "avx2 avx512f"))  # same name, fewer instructions


def test_deepspeed_imports_without_mlflow_and_mlflow_still_imports_after():
    """In a fresh process, as a rank starts: deepspeed without the ~1 s of mlflow its autotuner would import, and
    mlflow importable afterwards for whoever wants it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from dpo_ray.workers.deepspeed_setup import import_deepspeed\n"
        "deepspeed = import_deepspeed()\n"
        "print(deepspeed.initialize is not None, 'mlflow' in sys.modules)\n"
        "import mlflow\n"
        "print(mlflow.__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False", "mlflow"]
