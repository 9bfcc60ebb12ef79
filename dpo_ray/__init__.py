"""dpo-ray: distributed DPO on Ray. From Python: dpo_ray.config(...), dpo_ray.train(cfg, train_dataset=...),
dpo_ray.online(cfg), dpo_ray.plan(cfg) (dpo_ray/api.py), the same runs as the command line."""

__all__ = ["RunResult", "config", "online", "plan", "train"]


def __getattr__(name: str):
    """The API on first use: the Ray actors import this package too, and need none of it."""
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'dpo_ray' has no attribute {name!r}")
