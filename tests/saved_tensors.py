"""What autograd keeps for backward: the one measurement the activation estimates are checked against (the tests and
bench/long_sequences.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def saved_for_backward(model: torch.nn.Module, forward: Callable[[], object]) -> int:
    """Bytes of the tensors autograd saves while forward() runs, each storage counted once, the model's weights left
    out."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(saved.values())
