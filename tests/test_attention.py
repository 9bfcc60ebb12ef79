"""dpo-ray's attention wrapper: transparent when a batch asks nothing of it."""

from __future__ import annotations

import torch

from dpo_ray.attention import install


def test_the_wrapped_attention_is_the_registered_one_without_a_key_index():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from .flash_stand_in import register

    name = register()
    inner = ALL_ATTENTION_FUNCTIONS[name]
    install(name)
    install(name)  # once per process, however often a batch asks
    wrapped = ALL_ATTENTION_FUNCTIONS[name]
    assert wrapped.inner is inner

    class Module(torch.nn.Module):
        is_causal = True

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)
            self.config = type("Config", (), {"_attn_implementation": name})()

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 4, generator=gen) for _ in range(3))
    mask = torch.ones(2, 5, dtype=torch.long)
    assert torch.equal(wrapped(Module(), q, k, v, mask)[0], inner(Module(), q, k, v, mask)[0])
