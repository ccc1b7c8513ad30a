"""The stacked MoE scorer (a few kernels a layer, attribute/moe_stacked.py) keeps the same expert neurons with the
same values, to the last bit, as the general path through capture_experts + scores_from_capture; models it does
not serve take the general path."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_moe import MOE_FAMILIES, random_ids, tiny_moe_model
from neuronscope.attribute import moe_stacked
from neuronscope.attribute.moe_contribution import moe_contribution
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models import get_adapter


def _inputs() -> tuple[Batch, TargetSet]:
    inputs = random_ids(2, 7, left_pad=(0, 2))
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    batch = Batch(inputs, ["?", "?"], inputs["attention_mask"].sum(-1))
    targets = TargetSet(torch.tensor([[5, 9, 5], [7, 11, 0]]), torch.tensor([[6, 3, 5], [6, 4, 0]]),
                        torch.tensor([[True, True, True], [True, True, False]]))
    return batch, targets


def _both(model, monkeypatch, **options):
    batch, targets = _inputs()
    ran = []
    original = moe_stacked.StackedExperts.write
    monkeypatch.setattr(moe_stacked.StackedExperts, "write", lambda self, scores: ran.append(1) or original(self, scores))
    fast = moe_contribution(model, batch, targets, **options)
    monkeypatch.setattr(moe_stacked, "fits", lambda *args: False)
    general = moe_contribution(model, batch, targets, **options)
    return fast, general, bool(ran)


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "olmoe"])
@pytest.mark.parametrize("dtype,implementation", [(torch.float64, "batched_mm"), (torch.float32, "grouped_mm"),
                                                  (torch.bfloat16, "batched_mm")])
@pytest.mark.parametrize("final_norm,absolute", [(False, False), (True, True)])
def test_stacked_equals_the_general_path(family, dtype, implementation, final_norm, absolute, monkeypatch) -> None:
    model = tiny_moe_model(family, dtype=dtype, experts_implementation=implementation)
    fast, general, ran = _both(model, monkeypatch, top_k=11, final_norm=final_norm, absolute=absolute)
    assert ran, "the stacked path did not run"
    assert torch.equal(fast.indices, general.indices) and torch.equal(fast.values, general.values)
    assert fast.layout == general.layout and fast.bias is None and general.bias is None


@pytest.mark.parametrize("family", [f for f in MOE_FAMILIES if f not in ("mixtral", "qwen3_moe", "olmoe")])
def test_families_it_does_not_serve_take_the_general_path(family, monkeypatch) -> None:
    model = tiny_moe_model(family)
    adapter = get_adapter(model)
    layers = adapter.resolve_layers(None)
    moe = adapter.moe
    served = moe_stacked.fits(adapter, layers, False)
    expected = (all(moe.is_moe(layer) for layer in layers)
                and not any(moe.layers[layer].shared or moe.layers[layer].has_bias
                            or moe.layers[layer].family.weight_on_input or not moe.layers[layer].interface
                            for layer in layers))
    assert served == expected
    fast, general, ran = _both(model, monkeypatch, top_k=5)
    assert ran == served
    assert torch.equal(fast.indices, general.indices) and torch.equal(fast.values, general.values)
