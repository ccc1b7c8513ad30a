"""Gradient × activation against per-neuron finite differences and a direct autograd computation."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.attribute import get_method
from neuronscope.attribute.gradient_x_activation import gradient_x_activation
from neuronscope.errors import NeuronscopeError, PositionError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import token_targets
from neuronscope.models import get_adapter

EXACT = dict(rtol=1e-7, atol=1e-12)


def _batch(inputs: dict) -> Batch:
    mask = inputs["attention_mask"]
    return Batch({**inputs, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}, [""] * len(mask), mask.sum(-1))


def _finite_difference(model, batch, layer, row, position, token, epsilon=1e-5):
    """Central differences ``∂log P(token at position) / ∂a_i`` for every neuron i of one row: the row is repeated
    as 2·d_ff rows, each pushing one neuron by ±ε (raw pre-hook on the FFN output projection)."""
    adapter = get_adapter(model)
    d_ff = adapter.d_ff
    push = torch.cat([torch.eye(d_ff), -torch.eye(d_ff)]).double() * epsilon  # [2 d_ff, d_ff]

    def add(module, args):
        hidden = args[0].clone()
        hidden[:, position] += push
        return (hidden,)

    inputs = {key: value[row:row + 1].expand(2 * d_ff, -1) for key, value in batch.inputs.items()}
    handle = adapter.module(layer, adapter.family.down).register_forward_pre_hook(add)
    try:
        with torch.no_grad():
            log_p = model(**inputs).logits[:, position].log_softmax(-1)[:, token]
    finally:
        handle.remove()
    return (log_p[:d_ff] - log_p[d_ff:]) / (2 * epsilon)


def test_equals_finite_differences_on_every_neuron():
    """Central differences of log P per neuron (float64, ε = 1e-5: error ~ε²), two targets per row, padding.

    GPT-NeoX, not Llama: Llama's RMSNorm computes in float32 even in a float64 model, which makes finite
    differences noisy at ~1e-3 relative (the autograd comparison below covers Llama)."""
    model = tiny_text_model("gpt_neox", dtype=torch.float64)
    adapter = get_adapter(model)
    batch = _batch(random_batch(batch=2, length=5, seed=2, left_pad=(2, 0)))
    targets = token_targets(batch, [[5, 9], [11, 13]])
    targets.positions[1, 0] = 2  # an inner position for one target
    scores = gradient_x_activation(model, batch, targets).values
    assert scores.shape == (2, 2, adapter.n_layers, adapter.d_ff)
    down_inputs = {}
    hooks = [adapter.module(layer, adapter.family.down).register_forward_pre_hook(
        lambda module, args, layer=layer: down_inputs.__setitem__(layer, args[0].detach())) for layer in range(2)]
    with torch.no_grad():
        model(**batch.inputs)
    for hook in hooks:
        hook.remove()
    for row in range(2):
        for column in range(2):
            position, token = int(targets.positions[row, column]), int(targets.token_ids[row, column])
            for layer in range(adapter.n_layers):
                expected = _finite_difference(model, batch, layer, row, position, token)
                expected = down_inputs[layer][row, position] * expected
                tolerance = 1e-6 * float(expected.abs().max())
                torch.testing.assert_close(scores[row, column, layer], expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("family, site", [("gpt2", "neuron"), ("gpt_neox", "act"), ("llama", "up"),
                                          ("phi3", "up"), ("qwen2", "gate")])
def test_equals_direct_autograd(family, site):
    """retain_grad on the site tensor itself, one example at a time, vs. the batched method."""
    model = tiny_text_model(family, dtype=torch.float64)
    adapter = get_adapter(model)
    inputs = random_batch(batch=3, length=6, seed=3, left_pad=(0, 2, 1))
    batch = _batch(inputs)
    tokens = [[4, 4], [8, 20], [12, 30]]  # two targets at the same (last) position
    scores = gradient_x_activation(model, batch, token_targets(batch, tokens), site=site).values
    spec = adapter.family
    for row in range(3):
        real = inputs["attention_mask"][row].bool()
        ids = inputs["input_ids"][row, real][None]
        for column, token in enumerate(tokens[row]):
            seen = {}

            def keep(module, args, output, layer, seen=seen):
                tensor = output if isinstance(output, torch.Tensor) else args[0]
                if site == "up" and spec.fused_gate_up is not None:
                    tensor = output
                tensor.retain_grad()
                seen[layer] = tensor

            handles = []
            for layer in range(adapter.n_layers):
                if site == "neuron":
                    module = adapter.module(layer, spec.down)
                    handles.append(module.register_forward_pre_hook(
                        lambda m, args, layer=layer, seen=seen: (args[0].retain_grad(), seen.__setitem__(layer, args[0]))[0]))
                    continue
                name = {"act": spec.act, "up": spec.fused_gate_up or spec.up, "gate": spec.gate}[site]
                handles.append(adapter.module(layer, name).register_forward_hook(
                    lambda m, args, output, layer=layer: keep(m, args, output, layer)))
            model.zero_grad()
            model(input_ids=ids).logits[0, -1].log_softmax(-1)[token].backward()
            for handle in handles:
                handle.remove()
            for layer in range(adapter.n_layers):
                tensor = seen[layer]
                values, grads = tensor.detach()[0, -1], tensor.grad[0, -1]
                if site == "up" and spec.fused_gate_up is not None:
                    values, grads = values[adapter.d_ff:], grads[adapter.d_ff:]
                torch.testing.assert_close(scores[row, column, layer], values * grads, **EXACT)


def test_layers_subset_and_invalid_targets_are_zero():
    model = tiny_text_model("llama", dtype=torch.float64)
    batch = _batch(random_batch(batch=2, length=4, seed=4))
    targets = token_targets(batch, [[5, 6], [7, 8]])
    full = gradient_x_activation(model, batch, targets).values
    targets.valid[1, 1] = False
    part = gradient_x_activation(model, batch, targets, layers=[1]).values
    assert part.shape == (2, 2, 1, 24)
    torch.testing.assert_close(part[:, :, 0][targets.valid], full[:, :, 1][targets.valid], **EXACT)
    assert bool((part[1, 1] == 0).all())


def test_registered_and_errors():
    assert get_method("gradient_x_activation").function is gradient_x_activation
    model = tiny_text_model("llama")
    batch = _batch(random_batch(batch=1, length=4))
    targets = token_targets(batch, 5)
    with pytest.raises(NeuronscopeError, match="neuron sites"):
        gradient_x_activation(model, batch, targets, site="attn")
    targets.positions[0, 0] = 4
    with pytest.raises(PositionError, match="outside the sequence"):
        gradient_x_activation(model, batch, targets)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_vision_language_batch_equals_direct_autograd(family):
    """A left-padded image + text batch runs as one forward; retain_grad on the site is the oracle, at the target
    position and (the default for image inputs) averaged over each row's image-token positions."""
    from PIL import Image

    from helpers.tiny_vlms import build_tiny_vlm

    vlm = build_tiny_vlm(family)
    model = vlm.model.double()
    inputs = dict(vlm.inputs([Image.new("RGB", (40, 32), "red"), Image.new("RGB", (24, 48), "blue")],
                             texts=[vlm.prompt(1, "A long question?"), vlm.prompt(1, "Hi")]))
    batch = Batch(inputs, ["", ""], inputs["attention_mask"].sum(-1))
    targets = token_targets(batch, [[5, 7], [9, 11]])
    scores = gradient_x_activation(model, batch, targets, positions="target").values
    image_scores = gradient_x_activation(model, batch, targets).values
    image_token = getattr(model.config, "image_token_id", None) or model.config.image_token_index
    image = batch.input_ids == image_token  # [2, T]
    assert bool(image.any(-1).all())
    adapter = get_adapter(model)
    seen = {}
    handles = [adapter.module(layer, adapter.family.down).register_forward_pre_hook(
        lambda m, args, layer=layer: (args[0].retain_grad(), seen.__setitem__(layer, args[0]))[0])
        for layer in range(adapter.n_layers)]
    try:
        for column in range(2):
            model.zero_grad()
            seen.clear()
            log_p = model(**inputs).logits[:, -1].log_softmax(-1)
            log_p[[0, 1], targets.token_ids[:, column]].sum().backward()
            for layer in range(adapter.n_layers):
                site = seen[layer]
                expected = site.detach()[:, -1] * site.grad[:, -1]
                torch.testing.assert_close(scores[:, column, layer], expected, **EXACT)
                products = site.detach() * site.grad
                for row in range(2):
                    torch.testing.assert_close(image_scores[row, column, layer], products[row, image[row]].mean(0),
                                               **EXACT)
    finally:
        for handle in handles:
            handle.remove()


# -- image-prefix positions (Schwettmann et al.) ------------------------------------------------------------------
def _leaf_gradients(model, batch, layer, token, position):
    """By hand, one layer: the FFN output projection's input made a leaf by a plain pre-hook on the stock module;
    ``∂log P(token at position) / ∂a`` at every position by autograd, and ``a`` itself."""
    from neuronscope.models import get_adapter

    adapter = get_adapter(model)
    leaf = {}

    def make_leaf(module, args):
        leaf["a"] = args[0].detach().requires_grad_(True)
        return (leaf["a"],)

    handle = adapter.module(layer, adapter.family.down).register_forward_pre_hook(make_leaf)
    try:
        log_p = model(**batch.inputs).logits[0, position].float().log_softmax(-1)[token]
        log_p.backward()
    finally:
        handle.remove()
    return leaf["a"].detach()[0], leaf["a"].grad[0]


def test_image_positions_mean_of_leaf_gradients_times_activations():
    from PIL import Image

    from helpers.tiny_vlms import tiny_llava

    vlm = tiny_llava()
    encoded = vlm.inputs([Image.new("RGB", (48, 48), (200, 40, 40))])
    batch = Batch(dict(encoded), [""], encoded["attention_mask"].sum(-1))
    targets = token_targets(batch, [7])
    image = (batch.input_ids[0] == vlm.model.config.image_token_index).nonzero()[:, 0]
    assert len(image) == 36
    scores = gradient_x_activation(vlm.model, batch, targets)  # "auto" -> image positions
    assert scores.meta["positions"] == "mean over the image-prefix positions"
    at_target = gradient_x_activation(vlm.model, batch, targets, positions="target")
    for layer in range(get_adapter(vlm.model).n_layers):
        a, grad = _leaf_gradients(vlm.model, batch, layer, 7, batch.seq_len - 1)
        torch.testing.assert_close(scores.values[0, 0, layer], (a * grad)[image].mean(0), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(at_target.values[0, 0, layer], (a * grad)[-1], rtol=1e-4, atol=1e-7)
    with pytest.raises(NeuronscopeError, match="positions must be"):
        gradient_x_activation(vlm.model, batch, targets, positions="everywhere")


def test_image_positions_need_image_tokens():
    model = tiny_text_model("llama")
    model.config.image_token_id = 63
    batch = _batch(random_batch(batch=1, length=5, seed=2))
    targets = token_targets(batch, [5])
    with pytest.raises(NeuronscopeError, match="image tokens"):
        gradient_x_activation(model, batch, targets, positions="image")
    assert gradient_x_activation(model, batch, targets).meta["positions"] == "target position"
