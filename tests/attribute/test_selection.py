"""Contribution selected on the device (running top-k / threshold inside the forward) against the dense grid's
top-k and threshold; the selection math on hand-made tensors."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.attribute import selection
from neuronscope.attribute.contribution import SelectedScores, contribution
from neuronscope.attribute.selection import BufferedTopK, RunningTopK, ThresholdSelection, to_host
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet


def _batch(**kwargs) -> Batch:
    inputs = random_batch(**kwargs)
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return Batch(inputs, ["?"] * inputs["input_ids"].shape[0], inputs["attention_mask"].sum(-1))


def _targets() -> TargetSet:
    """Two rows, up to three targets at inner positions, one slot empty."""
    return TargetSet(torch.tensor([[7, 11, 7], [3, 20, 0]]), torch.tensor([[6, 4, 5], [6, 3, 0]]),
                     torch.tensor([[True, True, True], [True, True, False]]))


@pytest.mark.parametrize("family,site,final_norm", [("llama", "neuron", False), ("llama", "act", True),
                                                     ("gpt2", "neuron", True), ("qwen2", "neuron", False)])
@pytest.mark.parametrize("absolute", [False, True])
@pytest.mark.parametrize("selector", ["buffered", "running"])
def test_top_k_on_device_equals_dense_top_k(family, site, final_norm, absolute, selector, monkeypatch):
    if selector == "running":  # the GPU's selector at large sizes, forced on the CPU (layer by layer)
        monkeypatch.setattr(selection, "SELECTOR", "running")
    model = tiny_text_model(family, dtype=torch.float64)
    batch = _batch(batch=2, length=7, left_pad=(0, 2))
    targets = _targets()
    layers = [1, 0]
    dense = contribution(model, batch, targets, site=site, final_norm=final_norm, layers=layers).values
    k = 17
    kept = contribution(model, batch, targets, site=site, final_norm=final_norm, layers=layers, top_k=k,
                        absolute=absolute)
    assert kept.sparse and kept.values.shape == (2, 3, k) and kept.shape == (2, dense.shape[-1])
    flat = dense.flatten(2)
    order = (flat.abs() if absolute else flat).topk(k, dim=-1).indices
    expected = flat.gather(-1, order) * targets.valid[:, :, None]
    torch.testing.assert_close(kept.values, expected, rtol=1e-10, atol=1e-12)
    valid = targets.valid
    assert torch.equal(kept.indices[valid], order[valid])
    # the sparse result read back as a grid holds exactly the dense values at the kept neurons
    back = kept.dense().flatten(2)
    torch.testing.assert_close(back.gather(-1, order)[valid], flat.gather(-1, order)[valid], rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("final_norm", [False, True])
def test_threshold_on_device_equals_dense_threshold(final_norm):
    model = tiny_text_model("llama", dtype=torch.float64)
    batch = _batch(batch=2, length=7)
    targets = _targets()
    dense = contribution(model, batch, targets, final_norm=final_norm).values
    threshold = float(dense.abs().max()) / 4
    kept = contribution(model, batch, targets, final_norm=final_norm, threshold=threshold)
    assert isinstance(kept, SelectedScores)
    expected = torch.where(dense >= threshold, dense, torch.zeros_like(dense))
    assert kept.values.numel() == int((dense >= threshold).sum()) > 0
    torch.testing.assert_close(kept.dense(), expected, rtol=1e-10, atol=1e-12)
    both = contribution(model, batch, targets, final_norm=final_norm, threshold=threshold, absolute=True)
    torch.testing.assert_close(both.dense(), torch.where(dense.abs() >= threshold, dense, torch.zeros_like(dense)),
                               rtol=1e-10, atol=1e-12)


def test_float32_and_bf16_selection():
    """float32: the same kept set as the dense path; bf16 model: the kept set agrees with float32's within the
    rounding of bf16 (stated, not a timing)."""
    model = tiny_text_model("llama", dtype=torch.float32)
    batch = _batch(batch=2, length=7)
    targets = _targets()
    dense = contribution(model, batch, targets).values
    kept = contribution(model, batch, targets, top_k=10)
    order = dense.flatten(2).topk(10, dim=-1).indices
    assert torch.equal(kept.indices[targets.valid], order[targets.valid])
    half = contribution(model.to(torch.bfloat16), batch, targets, top_k=10)
    overlap = [len(set(a.tolist()) & set(b.tolist())) / 10
               for a, b in zip(half.indices[targets.valid], kept.indices[targets.valid], strict=True)]
    assert min(overlap) >= 0.5  # bf16 activations (8 bits of mantissa) reorder near-ties only


def test_running_top_k_and_threshold_by_hand():
    for top in (RunningTopK(rows=1, k=2, d_ff=3, device="cpu", absolute=True),
                BufferedTopK(rows=1, k=2, d_ff=3, layers=2, device="cpu", absolute=True)):
        top.add(0, torch.tensor([[1.0, -5.0, 2.0]]))
        top.add(1, torch.tensor([[0.5, 3.0, -0.1]]))
        assert top.values.tolist() == [[-5.0, 3.0]] and top.indices.tolist() == [[1, 4]]
    # the two selectors agree on random scores over many layers
    generator = torch.Generator().manual_seed(0)
    running, buffered = RunningTopK(3, 40, 16, "cpu"), BufferedTopK(3, 40, 16, 5, "cpu")
    for layer in range(5):
        scores = torch.randn(3, 16, generator=generator, dtype=torch.float64)
        running.add(layer, scores)
        buffered.add(layer, scores)
    assert torch.equal(running.values, buffered.values) and torch.equal(running.indices, buffered.indices)
    chosen = ThresholdSelection(2.0, 3)
    chosen.add(0, torch.tensor([[1.0, 5.0, 2.0], [0.0, 0.0, 3.0]]))
    chosen.add(2, torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    chosen.finish()
    assert chosen.coordinates.tolist() == [[0, 1], [0, 2], [1, 2], [0, 6]]
    assert chosen.values.tolist() == [5.0, 2.0, 3.0, 9.0]
    assert to_host(torch.ones(2))[0].tolist() == [1.0, 1.0]


def test_errors():
    model = tiny_text_model("llama")
    batch = _batch(batch=2, length=7)
    with pytest.raises(NeuronscopeError, match="not both"):
        contribution(model, batch, _targets(), top_k=3, threshold=0.1)
    with pytest.raises(NeuronscopeError, match="at least 1"):
        contribution(model, batch, _targets(), top_k=0)
