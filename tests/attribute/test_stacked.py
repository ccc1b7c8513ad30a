"""The stacked path of the device-selected contribution (two kernels per layer, the rest after the forward) keeps
the same neurons with the same values, to the last bit, as the layer-by-layer path and the dense grid."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.attribute import stacked
from neuronscope.attribute.contribution import contribution
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet


def _inputs() -> tuple[Batch, TargetSet]:
    inputs = random_batch(batch=2, length=7, left_pad=(0, 2))
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    batch = Batch(inputs, ["?", "?"], inputs["attention_mask"].sum(-1))
    targets = TargetSet(torch.tensor([[7, 11, 7], [3, 20, 0]]), torch.tensor([[6, 4, 5], [6, 3, 0]]),
                        torch.tensor([[True, True, True], [True, True, False]]))
    return batch, targets


@pytest.mark.parametrize("family,final_norm", [("llama", False), ("llama", True), ("gpt2", True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stacked_equals_layer_by_layer_and_the_dense_grid(family, final_norm, dtype, monkeypatch) -> None:
    model = tiny_text_model(family, dtype=dtype)
    batch, targets = _inputs()
    calls = []
    original = stacked.StackedScores.write
    monkeypatch.setattr(stacked.StackedScores, "write", lambda self, buffer: calls.append(1) or original(self, buffer))
    fast = contribution(model, batch, targets, top_k=9, final_norm=final_norm)
    assert calls, "the stacked path did not run"
    monkeypatch.setattr(stacked, "STACK_LIMIT", 0)
    slow = contribution(model, batch, targets, top_k=9, final_norm=final_norm)
    assert len(calls) == 1  # the limit sends the second call down the layer-by-layer path
    assert torch.equal(fast.indices, slow.indices) and torch.equal(fast.values, slow.values)
    dense = contribution(model, batch, targets, final_norm=final_norm).values.flatten(2)
    assert torch.equal(dense.gather(-1, fast.indices), fast.values)
