"""Value-vector edits: apply/revert bit for bit, refusal of foreign edits, files, export."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.edit.weights import ValueVectorEdit, export_edited
from neuronscope.errors import EditMismatchError, NeuronscopeError
from neuronscope.models import get_adapter, load_model

NEURONS = torch.tensor([[0, 1], [1, 4], [1, 7]])


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", ["llama", "gpt2", "phi3"])
def test_apply_then_revert_restores_every_bit(family):
    model = tiny_text_model(family, dtype=torch.bfloat16 if family == "llama" else torch.float32)
    before = _state(model)
    for edit in (ValueVectorEdit.noise(model, NEURONS, sigma=0.3, seed=1),
                 ValueVectorEdit.token_shift(model, NEURONS, source=5, target=9, strength=0.7),
                 ValueVectorEdit.erase(model, NEURONS)):
        handle = edit.apply(model)
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
        assert changed and all("proj" in k or "c_proj" in k for k in changed)
        handle.revert()
        after = model.state_dict()
        assert all(torch.equal(after[k], before[k]) for k in before)


def test_edit_values_are_what_the_formulas_say():
    model = tiny_text_model("llama")
    adapter = get_adapter(model)
    w = adapter.value_vectors(1)[4].detach().clone()
    u = adapter.unembedding().detach()
    with ValueVectorEdit.token_shift(model, NEURONS, source=5, target=9, strength=0.5).applied(model):
        torch.testing.assert_close(adapter.value_vectors(1)[4], w + 0.5 * (u[9] - u[5]))
    with ValueVectorEdit.erase(model, NEURONS).applied(model):
        assert torch.all(adapter.value_vectors(1)[4] == 0)
    e = model.get_input_embeddings().weight.detach()
    with ValueVectorEdit.knowledge_neuron(model, NEURONS, 5, 9, 0.2, 0.3).applied(model):
        torch.testing.assert_close(adapter.value_vectors(1)[4], w - 0.2 * e[5] + 0.3 * e[9])
    torch.testing.assert_close(adapter.value_vectors(1)[4], w, rtol=0, atol=0)


def test_signed_token_shift_flips_the_shift_of_negative_neurons_and_checks_its_signs():
    model = tiny_text_model("llama")
    adapter = get_adapter(model)
    u = adapter.unembedding().detach()
    before = [adapter.value_vectors(int(layer))[int(index)].detach().clone() for layer, index in NEURONS]
    signs = torch.tensor([1.0, -1.0, 1.0])
    edit = ValueVectorEdit.token_shift(model, NEURONS, source=5, target=9, strength=0.5, signs=signs)
    assert edit.params["signed_by_activation"] is True
    with edit.applied(model):
        for (layer, index), w, sign in zip(NEURONS.tolist(), before, signs.tolist(), strict=True):
            torch.testing.assert_close(adapter.value_vectors(layer)[index], w + sign * 0.5 * (u[9] - u[5]))
    with pytest.raises(NeuronscopeError, match="one \\+1 or -1 per neuron"):
        ValueVectorEdit.token_shift(model, NEURONS, 5, 9, 0.5, signs=torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(NeuronscopeError, match="per neuron"):
        ValueVectorEdit.token_shift(model, NEURONS, 5, 9, 0.5, signs=torch.tensor([1.0, -1.0]))
    by_source = ValueVectorEdit.token_shift(model, NEURONS, 5, 9, 0.5, signs="source")
    expected = torch.tensor([1.0 if float(w @ u[5]) >= 0 else -1.0 for w in before])
    torch.testing.assert_close(by_source.deltas, expected[:, None] * 0.5 * (u[9] - u[5]).float().expand(3, -1))
    with pytest.raises(NeuronscopeError, match="'source'"):
        ValueVectorEdit.token_shift(model, NEURONS, -1, 9, 0.5, signs="source")


def test_saved_edit_applies_to_a_fresh_model_and_refuses_others(tmp_path):
    model = tiny_text_model("llama", seed=0)
    edit = ValueVectorEdit.noise(model, NEURONS, sigma=0.5, seed=3, reason="test")
    edit.save(tmp_path / "edit")
    loaded = ValueVectorEdit.load(tmp_path / "edit")
    assert loaded.method == "noise" and loaded.params == {"sigma": 0.5, "seed": 3}
    fresh = tiny_text_model("llama", seed=0)
    batch = random_batch()
    with torch.no_grad():
        with edit.applied(model):
            expected = model(**batch).logits
        with loaded.applied(fresh):
            got = fresh(**batch).logits
    assert torch.equal(expected, got)
    other = tiny_text_model("llama", seed=1)  # same shapes, other weights
    before = _state(other)
    with pytest.raises(EditMismatchError, match="nothing was changed"):
        loaded.apply(other)
    assert all(torch.equal(other.state_dict()[k], before[k]) for k in before)
    with pytest.raises(EditMismatchError, match="model_type"):
        loaded.apply(tiny_text_model("gpt2"))
    with pytest.raises(NeuronscopeError, match="finite"):
        ValueVectorEdit.noise(model, NEURONS, sigma=float("inf"))
    with pytest.raises(NeuronscopeError, match="finite"):
        ValueVectorEdit.token_shift(model, NEURONS, 1, 2, float("nan"))


def test_applying_twice_is_refused_and_export_writes_the_edited_model(tmp_path):
    model = tiny_text_model("llama")
    edit = ValueVectorEdit.token_shift(model, NEURONS, source=5, target=9, strength=1.0)
    handle = edit.apply(model)
    with pytest.raises(EditMismatchError):
        edit.apply(model)
    handle.revert()
    export_edited(model, edit, tmp_path / "edited")
    edited = load_model(tmp_path / "edited", with_processor=False).model
    with edit.applied(model):
        assert torch.equal(get_adapter(edited).value_vectors(1), get_adapter(model).value_vectors(1))
    assert (tmp_path / "edited" / "neuronscope_edit.json").exists()
