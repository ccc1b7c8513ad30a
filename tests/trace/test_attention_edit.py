"""Attention re-weighting through the attention interface against a hand recomputation: probabilities from the
model's own ``output_attentions`` (eager), value states from a plain hook on the value projection, the new head
output ``Σ_s A'_s v_s`` computed in loops and written into the output projection's input by a plain pre-hook."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.errors import NeuronscopeError
from neuronscope.models import get_adapter
from neuronscope.models.attention import attention_module, value_states_from_projection
from neuronscope.trace.attention_edit import AttentionReweighting, edited_attention, reweight_probabilities

TOL = dict(rtol=1e-4, atol=1e-5)


def _inputs(rows: int = 3, length: int = 8) -> dict:
    inputs = random_batch(rows, length, seed=3, left_pad=(2,))
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return inputs


def _by_hand(row: list[float], sources: list[int], factors: list[float], mode: str) -> list[float]:
    new = list(row)
    if mode == "sources":
        kept = sum(row[s] for s in sources)
        now = sum(row[s] * f for s, f in zip(sources, factors, strict=True))
        for s, f in zip(sources, factors, strict=True):
            new[s] = row[s] * f * kept / now
    else:
        for s, f in zip(sources, factors, strict=True):
            new[s] = row[s] * f
        if mode == "row":
            total = sum(new)
            new = [x / total for x in new]
    return new


@pytest.mark.parametrize("mode", ["sources", "row", "none"])
def test_reweight_probabilities_by_hand(mode):
    probs = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]], [[0.7, 0.1, 0.1, 0.1], [0.0, 0.5, 0.5, 0.0]]])
    sources = torch.tensor([[3, 1], [0, 2]])
    factors = torch.tensor([[[2.0, 0.5], [1.0, 3.0]], [[0.0, 4.0], [1.5, 1.5]]])
    new = reweight_probabilities(probs, sources, factors, mode)
    for b in range(2):
        for k in range(2):
            expected = _by_hand(probs[b, k].tolist(), sources[b].tolist(), factors[b, k].tolist(), mode)
            assert torch.allclose(new[b, k], torch.tensor(expected), atol=1e-6), (mode, b, k)
    shared = reweight_probabilities(probs, sources, factors[:, 0], mode)  # [B, S] factors: same for every head
    assert torch.allclose(shared[:, 0], new[:, 0])


def _eager_reference(family: str, inputs: dict, layer: int):
    model = tiny_text_model(family)
    model.set_attn_implementation("eager")
    adapter = get_adapter(model)
    attention = attention_module(adapter, layer)
    kind = next(k for k in ("v_proj", "c_attn") if hasattr(attention, k))
    values = {}
    getattr(attention, kind).register_forward_hook(
        lambda m, a, out: values.__setitem__("v", value_states_from_projection(adapter, kind, out)))
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    return model, out, values["v"]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_reweighting_changes_the_output_exactly_as_recomputed_by_hand(family):
    inputs = _inputs()
    layer, heads = 1, [0, 3]
    sources = torch.tensor([[3, 5, 6], [1, 4, 7], [2, 3, 6]])
    factors = torch.tensor([[[2.0, 0.5, 1.0]] * 3, [[0.2, 3.0, 1.5]] * 3]).permute(1, 0, 2).contiguous()  # [B, k, S]
    plan = AttentionReweighting(layer, torch.tensor(heads), sources, factors)

    model, reference, values = _eager_reference(family, inputs, layer)
    adapter = get_adapter(model)
    group = adapter.n_heads // adapter.n_kv_heads
    probs = reference.attentions[layer][:, :, -1]  # [B, H, T]
    new_sites = {}
    for row in range(3):
        for slot, head in enumerate(heads):
            new = _by_hand(probs[row, head].tolist(), sources[row].tolist(), factors[row, slot].tolist(), "sources")
            value = values[row, :, head // group]  # [T, d_head]
            new_sites[(row, head)] = sum(p * value[s] for s, p in enumerate(new))

    def write_sites(module, args, kwargs):
        site = (args[0] if args else kwargs["hidden_states"]).clone()
        for (row, head), vector in new_sites.items():
            site[row, -1, adapter.head_slice(head)] = vector
        return ((site, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": site})

    output_projection = adapter.module(layer, adapter.family.attn_out)
    handle = output_projection.register_forward_pre_hook(write_sites, with_kwargs=True)
    with torch.no_grad():
        by_hand = model(**inputs).logits
    handle.remove()

    edited_model = tiny_text_model(family)
    with torch.no_grad(), edited_attention(edited_model, [plan], record_layers=[layer]) as record:
        edited = edited_model(**inputs).logits
    real = inputs["attention_mask"].bool()
    assert torch.allclose(edited[real], by_hand[real], **TOL)
    assert not torch.allclose(edited[:, -1], reference.logits[:, -1], **TOL)  # the edit did something
    assert torch.allclose(edited[:, :-1][real[:, :-1]], reference.logits[:, :-1][real[:, :-1]], **TOL)  # last only
    assert torch.allclose(record.rows[layer][:, :, 0], probs, **TOL)
    assert torch.allclose(record.edited[layer][:, 1], torch.tensor(
        [_by_hand(probs[r, 3].tolist(), sources[r].tolist(), factors[r, 1].tolist(), "sources") for r in range(3)]),
        atol=1e-5)


def test_identity_plan_and_recording_change_nothing_and_are_removed():
    inputs = _inputs()
    model = tiny_text_model("qwen2")
    before = model.config._attn_implementation
    with torch.no_grad():
        clean = model(**inputs).logits
    plan = AttentionReweighting(0, [1, 2], torch.tensor([[2, 3]] * 3), torch.ones(3, 2))
    queries = torch.tensor([[4, 7]] * 3)
    with torch.no_grad(), edited_attention(model, [plan], record_layers=[0, 1], queries=queries,
                                           value_output_norms=True) as record:
        same = model(**inputs).logits
    real = inputs["attention_mask"].bool()  # padded rows differ between sdpa and eager (fully masked)
    assert torch.allclose(same[real], clean[real], atol=1e-6)
    assert model.config._attn_implementation == before
    adapter = get_adapter(model)
    assert not any(hasattr(attention_module(adapter, layer), "_neuronscope_attention_edit") for layer in (0, 1))

    eager, reference, values = _eager_reference("qwen2", inputs, 1)
    assert torch.allclose(record.rows[1], reference.attentions[1][:, :, [4, 7]], **TOL)
    rows = adapter.attn_output_weight(1)
    group = adapter.n_heads // adapter.n_kv_heads
    for head in (0, 3):
        expected = (values[:, :, head // group] @ rows[adapter.head_slice(head)]).norm(dim=-1)  # [B, T]
        assert torch.allclose(record.value_output_norms[1][:, head], expected, **TOL)


def test_plan_errors_are_clear():
    with pytest.raises(NeuronscopeError, match="distinct"):
        AttentionReweighting(0, [0], torch.tensor([[1, 1]]), torch.ones(1, 2))
    with pytest.raises(NeuronscopeError, match="factors"):
        AttentionReweighting(0, [0], torch.tensor([[1, 2]]), torch.ones(1, 3))
    with pytest.raises(NeuronscopeError, match="non-negative"):
        AttentionReweighting(0, [0], torch.tensor([[1, 2]]), -torch.ones(1, 2))
    model = tiny_text_model("llama")
    with pytest.raises(NeuronscopeError, match="out of range"), \
            edited_attention(model, [AttentionReweighting(0, [9], torch.tensor([[1, 2]]), torch.ones(1, 2))]):
        pass
    with pytest.raises(NeuronscopeError, match="plan has 1 rows"), torch.no_grad(), \
            edited_attention(model, [AttentionReweighting(0, [0], torch.tensor([[1, 2]]), torch.ones(1, 2))]):
        model(**_inputs())
    assert model.config._attn_implementation != "neuronscope_edit"
