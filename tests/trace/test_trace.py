"""Tracing and interventions on every text family: exact identities, batching, generate, hook hygiene."""

from __future__ import annotations

import gc

import pytest
import torch

from helpers.tiny_models import TEXT_FAMILIES, random_batch, tiny_text_model
from neuronscope.errors import NeuronscopeError, PositionError, SiteError
from neuronscope.models import get_adapter
from neuronscope.trace import Intervention, capture, intervene, suppress
from neuronscope.trace.sites import NEURON_SITES, resolve_site


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module", params=TEXT_FAMILIES)
def family_model(request):
    # Gemma-2's eager attention turns left padding into NaN in float64 (a transformers quirk): float32 there.
    dtype = torch.float32 if request.param == "gemma2" else torch.float64
    return request.param, tiny_text_model(request.param, dtype=dtype)


def _tol(model) -> dict:
    double = next(model.parameters()).dtype == torch.float64
    return dict(rtol=1e-9, atol=1e-10) if double else dict(rtol=1e-4, atol=1e-5)


def test_hooked_forward_equals_plain_forward(family_model):
    family, model = family_model
    batch = random_batch()
    with torch.no_grad():
        plain = model(**batch).logits
        sites = [s for s in NEURON_SITES + ("attn", "ffn_out", "resid_pre", "resid_post")
                 if _site_exists(model, s)]
        with capture(model, sites=sites, positions="all") as acts:
            hooked = model(**batch).logits
    assert torch.equal(plain, hooked)
    assert acts.stack("neuron").shape == (3, 2, 7, get_adapter(model).d_ff)
    assert _hook_count(model) == 0


def _site_exists(model, site):
    try:
        resolve_site(get_adapter(model), site, 0)
        return True
    except SiteError:
        return False


def test_layer_sum_identity(family_model):
    """sum_i a_i <w_i, u_t> == <ffn_out, u_t> at that position, for every layer."""
    _, model = family_model
    adapter = get_adapter(model)
    batch = random_batch()
    with torch.no_grad(), capture(model, sites=["neuron", "ffn_out"], positions="last") as acts:
        model(**batch)
    u = adapter.unembedding()[[5, 9]]  # two target tokens [2, d]
    for layer in range(adapter.n_layers):
        a = acts.get("neuron", layer)[:, 0]  # [batch, d_ff]
        contributions = a[:, :, None] * (adapter.value_vectors(layer) @ u.T)[None]  # [batch, d_ff, 2]
        ffn_out = acts.get("ffn_out", layer)[:, 0]
        bias = getattr(adapter.module(layer, adapter.family.down), "bias", None)
        if bias is not None:
            ffn_out = ffn_out - bias
        torch.testing.assert_close(contributions.sum(1), ffn_out @ u.T, **_tol(model))


def test_zeroing_a_neuron_moves_the_residual_by_its_write(family_model):
    family, model = family_model
    adapter = get_adapter(model)
    layer, index = 1, 3
    batch = random_batch(batch=2, length=5)
    with torch.no_grad():
        with capture(model, sites=["neuron", "ffn_out", "resid_post"], layers=layer, positions="all") as before:
            model(**batch)
        with capture(model, sites="resid_post", layers=layer, positions="all") as after, intervene(
            model, suppress(torch.tensor([[layer, index]]), positions=[4])
        ):
            model(**batch)
    delta = after.get("resid_post") - before.get("resid_post")
    a = before.get("neuron")[:, 4, index]
    write = a[:, None] * adapter.value_vectors(layer)[index]  # [batch, d]
    post_norm = adapter.family.post_ffn_norm
    if post_norm is not None:  # Gemma-2/3, OLMo-2 normalise the FFN output before the residual add
        norm = adapter.module(layer, post_norm)
        ffn_out = before.get("ffn_out")[:, 4]
        write = norm(ffn_out) - norm(ffn_out - write)
    torch.testing.assert_close(delta[:, 4], -write, **_tol(model))
    assert torch.all(delta[:, :4] == 0)


def test_batched_left_padded_equals_one_by_one(family_model):
    family, model = family_model
    batch = random_batch(batch=3, length=6, left_pad=(0, 2, 4))
    batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), capture(model, positions="all") as batched:
        model(**batch)
    for row, pad in enumerate((0, 2, 4)):
        ids = batch["input_ids"][row:row + 1, pad:]
        with torch.no_grad(), capture(model, positions="all") as single:
            model(input_ids=ids)
        torch.testing.assert_close(batched.stack()[row:row + 1, :, pad:], single.stack(), **_tol(model))


def test_interventions_act_during_generate():
    model = tiny_text_model("llama", seed=3)
    adapter = get_adapter(model)
    batch = random_batch(batch=1, length=4)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        plain = model.generate(**batch, **kwargs)
        with capture(model, layers=[0], positions="last") as acts:
            again = model.generate(**batch, **kwargs)
        assert torch.equal(plain, again)
        assert acts.get("neuron", 0).shape == (1, 6, adapter.d_ff)  # prompt's last + 5 generated steps
        assert acts.positions("neuron", 0).tolist() == [[3, 4, 5, 6, 7, 8]]
        every = torch.tensor([[layer, i] for layer in range(adapter.n_layers) for i in range(adapter.d_ff)])
        with intervene(model, [Intervention("resid_post", 1, "add", 50.0 * adapter.unembedding()[7])]):
            pushed = model.generate(**batch, **kwargs)
        assert pushed[0, 4:].tolist() == [7] * 6
        with intervene(model, suppress(every, positions="generated")):
            gen_only = model.generate(**batch, **kwargs)
        assert gen_only[0, 4] == plain[0, 4]  # the first new token comes from the prompt's untouched forward


def test_generated_steps_capture_matches_reforward():
    model = tiny_text_model("qwen2", seed=4, dtype=torch.float64)
    batch = random_batch(batch=1, length=5)
    with torch.no_grad():
        with capture(model, layers=[1], positions="last") as during:
            out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=0)
        with capture(model, layers=[1], positions="all") as after:
            model(input_ids=out)
    torch.testing.assert_close(during.get("neuron", 1)[0], after.get("neuron", 1)[0, 4:8], rtol=1e-9, atol=1e-9)


def test_hooks_removed_when_forward_raises_and_memory_is_flat():
    model = tiny_text_model("llama")
    batch = random_batch()

    def explode(module, args):
        raise RuntimeError("boom inside the forward")

    bomb = model.model.layers[1].register_forward_pre_hook(explode)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model), intervene(model, suppress(torch.tensor([[0, 1]]))):
            model(**batch)
    bomb.remove()
    assert _hook_count(model) == 0

    def count_tensors() -> int:
        gc.collect()
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))

    def traced_call() -> None:
        with torch.no_grad(), capture(model, positions="all") as acts:
            model(**batch)
        del acts

    for _ in range(10):
        traced_call()
    baseline = count_tensors()
    for _ in range(200):
        traced_call()
    assert count_tensors() <= baseline
    assert _hook_count(model) == 0


def test_bad_inputs_have_clear_errors():
    model = tiny_text_model("llama")
    batch = random_batch(batch=1, length=4)
    with pytest.raises(SiteError, match="unknown site 'mlpx'"):
        with capture(model, sites="mlpx"):
            pass
    with pytest.raises(NeuronscopeError, match="out of range: this model has 2 layers"):
        with capture(model, layers=5):
            pass
    with pytest.raises(PositionError, match="outside the sequence of length 4"):
        with capture(model, positions=[9]):
            model(**batch)
    with pytest.raises(SiteError, match="not gated"):
        with capture(tiny_text_model("gpt2"), sites="up"):
            pass
    right_padded = {"input_ids": batch["input_ids"], "attention_mask": torch.tensor([[1, 1, 1, 0]])}
    with pytest.raises(PositionError, match="left padding"):
        with capture(model, positions="last"):
            model(**right_padded)
    with pytest.raises(NeuronscopeError, match="finite"):
        Intervention("neuron", 0, "scale", float("nan"))


def test_an_intervention_places_its_indices_once_per_device_and_once_per_call(monkeypatch):
    """Index tensors go to the device through models.devices.on_device (pinned, asynchronous on a GPU): the
    neuron index once per device, the selected (row, position) pairs once per forward call and layer."""
    import importlib

    intervene_module = importlib.import_module("neuronscope.trace.intervene")  # the module, not the function
    model = tiny_text_model("llama")
    inputs = random_batch(batch=2, length=5, seed=4)
    placed = []
    original = intervene_module.on_device
    monkeypatch.setattr(intervene_module, "on_device", lambda tensor, device: placed.append(tuple(tensor.shape))
                        or original(tensor, device))
    neurons = torch.tensor([[0, 1], [1, 2]])
    with intervene(model, suppress(neurons, positions="last")), torch.no_grad():
        model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=0)
    pairs = [shape for shape in placed if len(shape) == 2 and shape[0] == 3]  # [3, N]: rows, positions, columns
    assert len(pairs) == 2 * 4  # two layers, four calls
    assert len(placed) - len(pairs) == 2  # each layer's neuron index, once
    placed.clear()
    with intervene(model, suppress(neurons, positions="all")), torch.no_grad():  # a column operation: no pairs
        model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert placed == [(1,), (1,)]  # each layer's neuron index, once


@pytest.mark.parametrize("op,value", [("set", 0.0), ("set", 1.5), ("scale", 0.5), ("add", -2.0), ("scale", "per"),
                                      ("patch", "per")])
def test_an_everywhere_intervention_equals_the_same_one_on_explicit_positions(op, value):
    """positions="all" with a number (or one value per neuron) is applied as one column operation; the same
    change given as explicit positions (every position, through the per-call pairs) gives the same logits bit for
    bit; and such a hook set is declared graph-safe (the same device work at every call)."""
    from neuronscope.trace.hooks import foreign_hooks

    model = tiny_text_model("llama")
    inputs = random_batch(batch=2, length=6, seed=5, left_pad=(2, 0))
    neurons = torch.tensor([1, 4, 7])
    if value == "per":
        value = torch.tensor([0.5, -1.0, 2.0])
    everywhere = [Intervention("neuron", layer, op, value, neurons, positions="all") for layer in (0, 1)]
    explicit = [Intervention("neuron", layer, op, value, neurons, positions=list(range(6))) for layer in (0, 1)]
    with torch.no_grad():
        plain = model(**inputs).logits
        with intervene(model, everywhere):
            assert foreign_hooks(model) == 0
            fast = model(**inputs).logits
        with intervene(model, explicit):
            assert foreign_hooks(model) > 0
            reference = model(**inputs).logits
    assert not torch.equal(fast, plain)
    assert torch.equal(fast, reference)
