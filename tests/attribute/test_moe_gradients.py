"""Integrated gradients and gradient × activation of expert neurons against Captum.

The oracle: a forward function of one MoE layer's neurons ``x`` at the scored position, built by hand from the stock
weights and the routing of that position (a plain forward hook on the MoE block replaces its output there by
``Σ_slots g · (x_e @ W_e + b_e) + Σ_shared gate · x_s @ W_s``); Captum's ``IntegratedGradients`` and
``InputXGradient`` on it give NA and a · ∂log P/∂a, to compare with neuronscope's own hooks."""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients

from helpers.tiny_moe import MOE_FAMILIES, random_ids, tiny_moe_model
from neuronscope.attribute import gradient_x_activation, integrated_gradients
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models import get_adapter
from neuronscope.trace.experts import capture_experts


def _setup(family, length=5):
    model = tiny_moe_model(family)
    adapter = get_adapter(model)
    inputs = random_ids(1, length, seed=3)
    batch = Batch(inputs, ["?"], inputs["attention_mask"].sum(-1))
    targets = TargetSet(torch.tensor([[7]]), torch.tensor([[length - 1]]), torch.tensor([[True]]), [["x"]])
    return model, adapter, batch, targets


def _hand_forward(model, adapter, layer, ids, position, token, log=False):
    """``f(x [m, n_l]) -> P(token) [m]`` (or log P) with layer ``layer``'s neurons at ``position`` set to ``x``."""
    moe = adapter.moe.layers[layer]
    with capture_experts(model, layers=[layer], positions=[position]) as acts:
        model(input_ids=ids)
    routing = acts.moe(layer)
    experts, weights = routing.experts[0, 0], routing.weights[0, 0].double()
    down = moe.experts.down_proj.detach()
    width = moe.width

    def vectors(e):  # [f, d] value vectors of routed expert e, read from the stock tensor
        return down[e] if moe.transposed else down[e].T

    def write(x):  # [m, n_l] -> [m, d]
        out = torch.zeros(x.shape[0], adapter.d_model, dtype=x.dtype)
        for slot, e in enumerate(experts.tolist()):
            part = x[:, e * width:(e + 1) * width] @ vectors(e)
            if moe.has_bias:
                part = part + moe.experts.down_proj_bias[e].detach()
            out = out + weights[slot] * part
        offset = moe.n_experts * width
        for j, shared in enumerate(moe.shared):
            w = moe.shared_widths[j]
            out = out + routing.shared_weights[j][0, 0] * (x[:, offset:offset + w] @ shared.down_proj.weight.T)
            offset += w
        return out

    def forward(x):
        box = {}

        def hook(module, args, out):
            tensor = out[0] if isinstance(out, tuple) else out
            shaped = tensor.reshape(x.shape[0], ids.shape[1], -1).clone()
            shaped[:, position] = write(x).to(shaped.dtype)
            new = shaped.reshape(tensor.shape)
            return (new, *out[1:]) if isinstance(out, tuple) else new

        handle = moe.block.register_forward_hook(hook)
        try:
            logits = model(input_ids=ids.expand(x.shape[0], -1)).logits[:, position].double()
        finally:
            handle.remove()
        box["p"] = logits.log_softmax(-1)[:, token] if log else logits.softmax(-1)[:, token]
        return box["p"]

    return forward, _unweighted(routing)


def _unweighted(routing):
    """The layer's neurons ``a`` (not times g) at the captured position, in layout order ``[n_l]``."""
    parts = [routing.full(weighted=False)[0, 0].flatten()]
    parts += [acts[0, 0] for acts in routing.shared_acts]
    return torch.cat(parts)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_integrated_gradients_equal_captum(family):
    model, adapter, batch, targets = _setup(family)
    layer = sorted(adapter.moe.layers)[-1]
    steps = 5
    scores = integrated_gradients(model, batch, targets, steps=steps, layers=[layer])
    plain = integrated_gradients(model, batch, targets, steps=steps, layers=[layer], method="plain")
    forward, a = _hand_forward(model, adapter, layer, batch.input_ids, 4, 7)
    captum = IntegratedGradients(forward).attribute(a[None].double(), baselines=torch.zeros_like(a[None]).double(),
                                                    n_steps=steps, method="riemann_right")[0]
    mine = scores.values[0, 0, scores.layout.layer_block(layer)]
    torch.testing.assert_close(mine, captum.to(mine.dtype), rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(plain.values, scores.values, rtol=1e-7, atol=1e-12)
    assert mine.abs().sum() > 0


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_gradient_x_activation_equals_captum(family):
    model, adapter, batch, targets = _setup(family)
    scores = gradient_x_activation(model, batch, targets)
    for layer in adapter.moe.layers:
        forward, a = _hand_forward(model, adapter, layer, batch.input_ids, 4, 7, log=True)
        captum = InputXGradient(forward).attribute(a[None].double())[0]
        mine = scores.values[0, 0, scores.layout.layer_block(layer)]
        torch.testing.assert_close(mine, captum.to(mine.dtype), rtol=1e-7, atol=1e-10)


def test_ig_packs_two_targets_and_rows():
    model, adapter, _, _ = _setup("deepseek_v3")
    inputs = random_ids(2, 6, seed=5, left_pad=(0, 2))
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    batch = Batch(inputs, ["?", "?"], inputs["attention_mask"].sum(-1))
    targets = TargetSet(torch.tensor([[7, 9], [3, 4]]), torch.tensor([[5, 3], [5, 4]]),
                        torch.tensor([[True, True], [True, False]]), [["a", "b"], ["c", "d"]])
    both = integrated_gradients(model, batch, targets, steps=4)
    for row in range(2):
        single = Batch({k: v[row:row + 1] for k, v in inputs.items()}, ["?"], inputs["attention_mask"][row:row + 1]
                       .sum(-1))
        one = TargetSet(targets.token_ids[row:row + 1], targets.positions[row:row + 1],
                        targets.valid[row:row + 1], [["a", "b"]])
        alone = integrated_gradients(model, single, one, steps=4)
        torch.testing.assert_close(both.values[row], alone.values[0], rtol=1e-7, atol=1e-12)
    assert bool((both.values[1, 1] == 0).all())
