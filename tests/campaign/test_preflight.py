"""Checks that run before anything is built: what they refuse and what they let through."""

from __future__ import annotations

import importlib.util

import pytest

from dpo_ray.campaign.preflight import InputError, check_attention_kernel


def test_a_flash_attention_run_without_its_package_is_refused_before_anything_loads():
    """This machine has no flash_attn: the refusal names the option, the package and the way out."""
    assert importlib.util.find_spec("flash_attn") is None
    with pytest.raises(InputError, match="model.attn_implementation=flash_attention_2 needs the flash_attn package"):
        check_attention_kernel("flash_attention_2")
    with pytest.raises(InputError, match="flash_attn_interface.*model.attn_implementation=sdpa"):
        check_attention_kernel("flash_attention_3")
    check_attention_kernel("sdpa")
    check_attention_kernel("eager")
