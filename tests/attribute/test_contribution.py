"""Contribution (Pan et al.): brute force (remove one neuron, measure the logit-direction change), the layer-sum
identity, final-norm scaling against the frozen norm, batching, targets and errors."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_models import TEXT_FAMILIES, random_batch, tiny_text_model
from neuronscope.attribute import get_method
from neuronscope.attribute.contribution import contribution
from neuronscope.errors import NeuronscopeError, PositionError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet, token_targets
from neuronscope.models import get_adapter
from neuronscope.trace import capture, intervene, suppress


def _batch(**kwargs) -> Batch:
    inputs = random_batch(**kwargs)
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return Batch(inputs, ["?"] * inputs["input_ids"].shape[0], inputs["attention_mask"].sum(-1))


def _dtype(family):
    return torch.float32 if family == "gemma2" else torch.float64


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_contribution_equals_brute_force_removal(family):
    model = tiny_text_model(family, dtype=_dtype(family))
    adapter = get_adapter(model)
    batch = _batch(batch=2, length=5, left_pad=(0, 2))
    targets = token_targets(batch, [7, 11])
    scores = contribution(model, batch, targets).values  # [2, 1, L, d_ff]
    u = adapter.unembedding()[[7, 11]]
    tol = dict(rtol=1e-8, atol=1e-10) if _dtype(family) == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for layer, index in [(0, 2), (1, 5), (1, adapter.d_ff - 1)]:
        with torch.no_grad():
            with capture(model, sites="ffn_out", layers=layer) as plain:
                model(**batch.inputs)
            with capture(model, sites="ffn_out", layers=layer) as removed, intervene(
                model, suppress(torch.tensor([[layer, index]]))
            ):
                model(**batch.inputs)
        delta = (plain.get("ffn_out")[:, 0] - removed.get("ffn_out")[:, 0])  # [2, d]: what the neuron wrote
        brute = (delta * u).sum(-1)
        torch.testing.assert_close(scores[:, 0, layer, index], brute, **tol)
    # layer-sum identity: sum_i s[l, i] = <ffn_out_l - bias, u_t>
    with torch.no_grad(), capture(model, sites="ffn_out", positions="last") as acts:
        model(**batch.inputs)
    for layer in range(adapter.n_layers):
        out = acts.get("ffn_out", layer)[:, 0]
        bias = getattr(adapter.module(layer, adapter.family.down), "bias", None)
        if bias is not None:
            out = out - bias
        torch.testing.assert_close(scores[:, 0, layer].sum(-1), (out * u).sum(-1), **tol)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text"])
def test_final_norm_scaling_matches_the_frozen_norm(family):
    model = tiny_text_model(family, dtype=torch.float64)
    adapter = get_adapter(model)
    batch = _batch(batch=2, length=5)
    targets = token_targets(batch, 9)
    scores = contribution(model, batch, targets, final_norm=True).values
    with torch.no_grad(), capture(model, sites=["neuron", "resid_post"], positions="last") as acts:
        model(**batch.inputs)
    norm = adapter.final_norm()
    final = acts.get("resid_post", adapter.n_layers - 1)[:, 0]
    sigma = norm.scale(final)
    layer, index = 1, 3
    write = acts.get("neuron", layer)[:, 0, index, None] * adapter.value_vectors(layer)[index]  # [2, d]
    u = adapter.unembedding()[9].double()
    zero = torch.zeros_like(write)
    expected = ((norm.frozen(write, sigma) - norm.frozen(zero, sigma)) * u).sum(-1)
    torch.testing.assert_close(scores[:, 0, layer, index], expected, rtol=1e-8, atol=1e-10)


def test_act_site_batching_and_registry():
    model = tiny_text_model("llama", dtype=torch.float64)
    batch = _batch(batch=3, length=6, left_pad=(0, 1, 3))
    targets = token_targets(batch, [4, 5, 6])
    method = get_method("contribution")
    together = method.function(model, batch, targets, site="act").values
    for row in range(3):
        pad = int(batch.pad_lengths[row])
        inputs = {"input_ids": batch.input_ids[row:row + 1, pad:]}
        single = Batch(inputs, ["?"], torch.tensor([inputs["input_ids"].shape[1]]))
        alone = contribution(model, single, token_targets(single, [4 + row]), site="act").values
        torch.testing.assert_close(together[row:row + 1], alone, rtol=1e-9, atol=1e-11)


def test_bad_targets_are_clear_errors():
    model = tiny_text_model("llama")
    batch = _batch(batch=1, length=4)
    with pytest.raises(PositionError, match="outside the sequence"):
        contribution(model, batch, TargetSet(torch.tensor([[3]]), torch.tensor([[9]]), torch.tensor([[True]])))
    with pytest.raises(NeuronscopeError, match="outside the vocabulary"):
        contribution(model, batch, token_targets(batch, 999))
    with pytest.raises(NeuronscopeError, match="sites"):
        contribution(model, batch, token_targets(batch, 3), site="attn")
