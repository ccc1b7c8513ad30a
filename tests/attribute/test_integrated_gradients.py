"""Knowledge-neuron IG: Captum as the oracle, completeness, packed == plain, padding, sites, errors."""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.attribute import get_method
from neuronscope.attribute.integrated_gradients import alpha_grid, integrated_gradients
from neuronscope.errors import NeuronscopeError, PositionError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import token_targets
from neuronscope.models import get_adapter

EXACT = dict(rtol=1e-7, atol=1e-13)  # float64: scores are ~1e-5, so the relative tolerance is what bites


def _batch(inputs: dict) -> Batch:
    mask = inputs["attention_mask"]
    return Batch({**inputs, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}, [""] * len(mask), mask.sum(-1))


@pytest.fixture(scope="module", params=["llama", "gpt2", "gpt_neox"])
def model(request):
    return tiny_text_model(request.param, dtype=torch.float64)


def _probability_given_site(model, ids: torch.Tensor, layer: int, position: int, token: int):
    """P(token at position) as a function of layer's neuron site at position, ``x [rows, d_ff]``: a raw torch
    pre-hook on the FFN output projection, independent of neuronscope's trace machinery."""
    down = get_adapter(model).module(layer, get_adapter(model).family.down)

    def function(x: torch.Tensor) -> torch.Tensor:
        def replace(module, args):
            hidden = args[0].clone()
            hidden[:, position] = x
            return (hidden,)

        handle = down.register_forward_pre_hook(replace)
        try:
            logits = model(input_ids=ids[None].expand(x.shape[0], -1)).logits[:, position]
        finally:
            handle.remove()
        return logits.softmax(-1)[:, token]

    return function


def _clean_site(model, ids: torch.Tensor, layer: int, position: int) -> torch.Tensor:
    down = get_adapter(model).module(layer, get_adapter(model).family.down)
    seen = []
    handle = down.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, position].detach()))
    with torch.no_grad():
        model(input_ids=ids[None])
    handle.remove()
    return seen[0]  # [1, d_ff]


@pytest.mark.parametrize("grid", ["dai", "linspace"])
def test_equals_captum(model, grid):
    steps, token = 6, 11
    ids = random_batch(batch=1, length=6, seed=3)["input_ids"][0]
    batch = _batch({"input_ids": ids[None], "attention_mask": torch.ones(1, 6, dtype=torch.long)})
    scores = integrated_gradients(model, batch, token_targets(batch, token), steps=steps, grid=grid).values
    position = 5
    for layer in range(get_adapter(model).n_layers):
        function = _probability_given_site(model, ids, layer, position, token)
        a = _clean_site(model, ids, layer, position)
        ig = IntegratedGradients(function)
        if grid == "dai":  # α_k = k/m with weights 1/m is Captum's right Riemann sum
            expected = ig.attribute(a, baselines=0.0, n_steps=steps, method="riemann_right")
        else:
            # linspace(0, 1, m) with weights 1/m = ((m-1) · left sum on m-1 steps (α = 0..(m-2)/(m-1)) + the
            # α = 1 term) / m, and the α = 1 term a · ∂P(a)/∂a is Captum's InputXGradient.
            left = ig.attribute(a, baselines=0.0, n_steps=steps - 1, method="riemann_left")
            at_one = InputXGradient(function).attribute(a)
            expected = ((steps - 1) * left + at_one) / steps
        torch.testing.assert_close(scores[0, 0, layer], expected[0], **EXACT)


def test_completeness_error_shrinks_with_steps():
    model = tiny_text_model("llama", dtype=torch.float64)
    adapter = get_adapter(model)
    with torch.no_grad():  # larger weights, so that P is far from linear in the site
        adapter.module(1, adapter.family.down).weight.mul_(40)
        adapter.unembedding().mul_(3)
    ids = random_batch(batch=1, length=5, seed=4)["input_ids"][0]
    batch = _batch({"input_ids": ids[None], "attention_mask": torch.ones(1, 5, dtype=torch.long)})
    token, layer = 7, 1
    function = _probability_given_site(model, ids, layer, 4, token)
    with torch.no_grad():
        a = _clean_site(model, ids, layer, 4)
        exact = float(function(a) - function(torch.zeros_like(a)))  # P(y) - P(y | a_l = 0)
    errors = {}
    for grid in ("dai", "linspace"):
        for steps in (4, 32):
            na = integrated_gradients(model, batch, token_targets(batch, token), steps=steps, grid=grid,
                                      layers=[layer]).values
            errors[grid, steps] = abs(float(na.sum()) - exact)
        assert errors[grid, 32] < errors[grid, 4] / 4  # a Riemann sum: error ~ 1/m
        assert errors[grid, 32] < 0.01 * abs(exact)


def test_packed_equals_plain_with_padding_and_several_targets():
    model = tiny_text_model("qwen2", dtype=torch.float64)
    batch = _batch(random_batch(batch=2, length=6, seed=5, left_pad=(2, 0)))
    targets = token_targets(batch, [[5, 9], [9, 13]])
    targets.positions[1, 1] = 3  # a target at an inner position
    # linspace: its α = 0 row is the edge case; batch sizes that split a layer's steps over two forwards
    packed = integrated_gradients(model, batch, targets, steps=3, grid="linspace", batch_size=4).values
    plain = integrated_gradients(model, batch, targets, steps=3, grid="linspace", method="plain", batch_size=2).values
    assert packed.shape == (2, 2, 2, 24)
    assert packed.abs().min() > 0
    torch.testing.assert_close(packed, plain, **EXACT)


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text", "olmo2"])
def test_packed_equals_plain_on_other_families(family):
    """Sliding-window caches, logit soft-capping, post-norms: the prefix cache stays exact."""
    model = tiny_text_model(family, dtype=torch.float64)
    batch = _batch(random_batch(batch=1, length=5, seed=9))
    targets = token_targets(batch, 10)
    packed = integrated_gradients(model, batch, targets, steps=3, batch_size=4).values
    plain = integrated_gradients(model, batch, targets, steps=3, method="plain").values
    torch.testing.assert_close(packed, plain, **EXACT)


def test_left_padded_batch_equals_one_by_one():
    model = tiny_text_model("gpt2", dtype=torch.float64)
    inputs = random_batch(batch=3, length=6, seed=6, left_pad=(0, 3, 1))
    batch = _batch(inputs)
    together = integrated_gradients(model, batch, token_targets(batch, [4, 8, 12]), steps=4).values
    for row, token in enumerate([4, 8, 12]):
        real = inputs["attention_mask"][row].bool()
        alone = _batch({"input_ids": inputs["input_ids"][row, real][None],
                        "attention_mask": torch.ones(1, int(real.sum()), dtype=torch.long)})
        single = integrated_gradients(model, alone, token_targets(alone, token), steps=4).values
        torch.testing.assert_close(together[row], single[0], **EXACT)


def test_act_and_up_sites_give_the_neuron_scores():
    model = tiny_text_model("llama", dtype=torch.float64)
    batch = _batch(random_batch(batch=1, length=5, seed=7))
    targets = token_targets(batch, 6)
    neuron = integrated_gradients(model, batch, targets, steps=3).values
    for site in ("act", "up"):
        torch.testing.assert_close(integrated_gradients(model, batch, targets, steps=3, site=site).values, neuron,
                                   **EXACT)


def test_first_position_and_phi3_fused_up():
    model = tiny_text_model("phi3", dtype=torch.float64)  # gate and up share one projection
    batch = _batch(random_batch(batch=1, length=4, seed=8))
    targets = token_targets(batch, 6)
    targets.positions[0, 0] = 0  # nothing before the scored position: no prefix cache
    packed = integrated_gradients(model, batch, targets, steps=3, site="up").values
    plain = integrated_gradients(model, batch, targets, steps=3, method="plain").values
    torch.testing.assert_close(packed, plain, **EXACT)


def test_registered_and_grids():
    assert get_method("integrated_gradients").function is integrated_gradients
    assert get_method("integrated_gradients").uses_gradients
    assert alpha_grid(4).tolist() == [0.25, 0.5, 0.75, 1.0]
    assert alpha_grid(3, "linspace").tolist() == [0.0, 0.5, 1.0]
    assert alpha_grid(1, "linspace").tolist() == [0.0]


def test_errors():
    model = tiny_text_model("llama")
    batch = _batch(random_batch(batch=2, length=4, left_pad=(1, 0)))
    targets = token_targets(batch, 5)
    with pytest.raises(NeuronscopeError, match="steps >= 1"):
        integrated_gradients(model, batch, targets, steps=0)
    with pytest.raises(NeuronscopeError, match="unknown IG grid"):
        integrated_gradients(model, batch, targets, grid="trapezoid")
    with pytest.raises(NeuronscopeError, match="sites"):
        integrated_gradients(model, batch, targets, site="gate")
    with pytest.raises(NeuronscopeError, match="packed"):
        integrated_gradients(model, batch, targets, method="fast")
    targets.positions[0, 0] = 9
    with pytest.raises(PositionError, match="outside the sequence"):
        integrated_gradients(model, batch, targets)
    targets.positions[0, 0] = 0  # row 0 is padded there
    with pytest.raises(PositionError, match="padding"):
        integrated_gradients(model, batch, targets)
    with pytest.raises(NeuronscopeError, match="vision-language"):
        integrated_gradients(model, Batch({**batch.inputs, "pixel_values": torch.zeros(2, 3)}, batch.texts,
                                          batch.lengths), token_targets(batch, 5))


def test_out_of_memory_back_off_gives_the_same_scores(monkeypatch):
    """A (simulated) out-of-memory chunk is retried at half the size; the scores do not change."""
    from helpers.tiny_models import random_batch, tiny_text_model
    from neuronscope.inputs import Batch
    from neuronscope.inputs.targets import token_targets

    model = tiny_text_model("llama", dtype=torch.float64)
    inputs = random_batch(batch=1, length=5)
    batch = Batch(inputs, ["?"], torch.tensor([5]))
    targets = token_targets(batch, 7)
    whole = integrated_gradients(model, batch, targets, steps=6, batch_size=12).values
    monkeypatch.setenv("NEURONSCOPE_SIMULATE_OOM_ABOVE", "5")
    backed_off = integrated_gradients(model, batch, targets, steps=6, batch_size=12).values
    torch.testing.assert_close(backed_off, whole, rtol=1e-12, atol=1e-14)
