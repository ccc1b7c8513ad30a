"""The top-level API resolves every exported name, and ``ns.locate`` dispatches through the registry."""

from __future__ import annotations

import torch

import neuronscope as ns
from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.attribute.contribution import contribution
from neuronscope.inputs import Batch


def test_every_export_resolves():
    for name in dir(ns):
        assert getattr(ns, name) is not None


def test_attribute_dispatches_by_name():
    model = tiny_text_model("llama")
    inputs = random_batch(batch=1, length=4)
    batch = Batch(inputs, ["?"], torch.tensor([4]))
    targets = ns.token_targets(batch, 5)
    assert torch.equal(ns.locate("contribution", model, batch, targets).values,
                       contribution(model, batch, targets).values)
