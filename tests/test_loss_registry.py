"""The loss registry against TRL's own names, and each registered loss against its formula's signature."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

from dpo_ray.losses import paired, unpaired
from dpo_ray.losses.registry import FORMULAS, LOSSES, Kind
from dpo_ray.schema import AlgoConfig


def trl_field(config: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(config) if f.name == name)


def test_every_loss_of_trls_dpotrainer_is_registered_for_pairs():
    """TRL's DPOConfig.loss_type names, as the installed TRL's help lists them (Possible values are: `'sigmoid'`...)."""
    trl = pytest.importorskip("trl")
    help_text = trl_field(trl.DPOConfig, "loss_type").metadata["help"]
    names = re.findall(r"`'([a-z_]+)'`", help_text.split("Possible values are:")[1])
    assert len(names) >= 15, help_text  # TRL 1.16 lists 15; fewer means its help changed form
    assert [n for n in names if n not in LOSSES] == [], f"TRL {trl.__version__}"
    assert {n: LOSSES[n].kind for n in names if LOSSES[n].kind is Kind.UNPAIRED} == {}


def test_every_loss_of_trls_ktotrainer_is_registered_unpaired():
    trl = pytest.importorskip("trl")
    names = trl_field(trl.KTOConfig, "loss_type").metadata["choices"]
    assert {n: LOSSES[n].kind for n in names if n in LOSSES} == dict.fromkeys(names, Kind.UNPAIRED), trl.__version__


@pytest.mark.parametrize("name", list(LOSSES))
def test_each_loss_has_one_formula_taking_the_options_it_is_registered_with(name):
    loss = LOSSES[name]
    module = unpaired if loss.kind is Kind.UNPAIRED else paired
    assert FORMULAS[name].__module__ == module.__name__
    assert set(loss.reads) <= {f.name for f in dataclasses.fields(AlgoConfig)}
    assert re.search(r"\(\d{4}\.\d{5}\)$", loss.paper), loss.paper  # ends with its arXiv id
    if loss.kind is not Kind.UNPAIRED:  # unpaired_loss applies the KTO weights itself
        keywords = list(inspect.signature(FORMULAS[name]).parameters)[2:]  # after the pairs and beta
        assert set(keywords) == set(loss.reads) | ({"label_smoothing"} if loss.label_smoothing else set())
