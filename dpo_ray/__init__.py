"""dpo-ray: distributed DPO on Ray. From Python: dpo_ray.config(...), dpo_ray.train(cfg, train_dataset=...),
dpo_ray.online(cfg), dpo_ray.plan(cfg) (dpo_ray/api.py), the same runs as the command line."""

import os

# torch's OpenMP (libgomp) reads this once, when torch loads: a thread that waits at a barrier spins 3,000 times, not
# its default 300,000, before it sleeps. On cores shared with other ranks, an engine or another job, the long spin
# burnt the time slice the thread it waited for needed (bench/omp_spin.py). Passed on to every actor; a set value wins.
os.environ.setdefault("GOMP_SPINCOUNT", "3000")

__all__ = ["RunResult", "config", "online", "plan", "train"]


def __getattr__(name: str):
    """The API on first use: the Ray actors import this package too, and need none of it."""
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'dpo_ray' has no attribute {name!r}")
