"""The model contract checks: every registered model passes them, and they catch broken models."""

import pytest
import torch
from torch import nn

from mkeval.checks import check_model
from mkeval.registry import Registry, load_entry_points

from helpers import Bigram, bigram_spec


def _installed_models():
    reg = Registry()
    load_entry_points(reg)
    return reg.names("model")


@pytest.mark.parametrize("name", _installed_models())
def test_every_installed_model_meets_the_contract(registry, name):
    results = check_model(name, registry=registry)
    failed = [f"{r.name}: {r.detail}" for r in results if not r.passed]
    assert not failed, failed


class Leaky(Bigram):
    """Mixes in the mean over the whole sequence: sees the future."""

    def forward(self, input_ids):
        h = self.hidden_states(input_ids)
        return self.head(h + h.mean(dim=1, keepdim=True))


class Frozen(Bigram):
    def __init__(self, vocab_size, **kw):
        super().__init__(vocab_size, **kw)
        self.unused = nn.Linear(3, 3)


class Random(Bigram):
    def forward(self, input_ids):
        return super().forward(input_ids) + torch.randn(1)


@pytest.mark.parametrize("cls,check,reason", [
    (Leaky, "causality", "sees the future"),
    (Frozen, "gradients", "unused.weight"),
    (Random, "causality", "changed logits"),
])
def test_checks_catch_broken_models(cls, check, reason):
    from mkeval import ModelSpec

    reg = Registry()
    reg.add(ModelSpec(name="broken", build=lambda vocab_size, max_seq_len, size=None: cls(vocab_size)))
    results = {r.name: r for r in check_model("broken", registry=reg)}
    assert not results[check].passed and reason in results[check].detail


def test_a_good_model_passes(registry):
    registry.add(bigram_spec())
    assert all(r.passed for r in check_model("bigram", registry=registry))
