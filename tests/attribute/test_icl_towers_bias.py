"""Two towers, label merge and bias on tiny models against plain hooks: attention from ``output_attentions``
(eager), queries and keys from hooks on ``q_proj`` / ``k_proj`` (their outputs are ``W_Q n(x)``, ``W_K n(x)``
before RoPE), value states from ``v_proj``; bias conditions against full forwards."""

from __future__ import annotations

import pytest
import torch

from helpers.icl_words import toy_dataset, word_tokenizer
from helpers.tiny_models import tiny_text_model
from neuronscope.attribute.icl_bias import (
    ICLBias,
    bias_scores,
    class_balance_factors,
    label_attention,
    majority_classes,
    majority_factors,
    measure_bias,
    recency_factors,
    recent_classes,
    relative_reduction,
    reweighting_plans,
    slot_factors,
)
from neuronscope.attribute.icl_towers import label_merge, two_towers, within_prompt_correlation
from neuronscope.inputs.icl import encode_icl, sample_prompts
from neuronscope.models import get_adapter
from neuronscope.results.base import load_result
from neuronscope.trace.attention_edit import edited_attention

TOL = dict(rtol=1e-4, atol=2e-5)


def _icl(rows: int = 4, counts=(2, 2), order="random", seed=2):
    prompts = sample_prompts(toy_dataset(30), n_prompts=rows, counts=list(counts), label_words=["foo", "bar"],
                             seed=seed, order=order)
    return encode_icl(word_tokenizer(), prompts)


def _hooked(model, icl, layer: int):
    adapter = get_adapter(model)
    attention = adapter.layers[layer].self_attn
    seen = {}
    hooks = [getattr(attention, name).register_forward_hook(
        lambda m, a, out, name=name: seen.__setitem__(name, out.detach())) for name in ("q_proj", "k_proj", "v_proj")]
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(**icl.batch.inputs, output_attentions=True)
    model.set_attn_implementation(before)
    for hook in hooks:
        hook.remove()
    return out, seen


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_two_towers_against_hooked_queries_and_keys(family):
    model = tiny_text_model(family)
    adapter = get_adapter(model)
    icl = _icl()
    heads = [(1, 3), (0, 1)]
    towers = two_towers(model, icl, heads)
    out, seen = _hooked(model, icl, 1)
    d, group = adapter.head_dim, adapter.n_heads // adapter.n_kv_heads
    last = icl.batch.seq_len - 1
    for row in range(len(icl)):
        q = seen["q_proj"][row].view(-1, adapter.n_heads, d)[:, 3]  # [T, d_head]
        k = seen["k_proj"][row].view(-1, adapter.n_kv_heads, d)[:, 3 // group]
        start, stop = icl.query_spans[row].tolist()
        for j, position in enumerate(icl.label_positions[row].tolist()):
            assert towers.attention[row][0][j] == pytest.approx(float(out.attentions[1][row, 3, last, position]),
                                                                abs=1e-5)
            assert towers.similarity["qk_positions"][row][0][j] == pytest.approx(
                float(_cos(q[last], k[position])), abs=1e-4)
            a, b = icl.text_spans[row, j].tolist()
            expected = _cos(q[start:stop].mean(0), k[a:b].mean(0))  # projections are affine: mean commutes
            assert towers.similarity["qk_text"][row][0][j] == pytest.approx(float(expected), abs=1e-4)
            same = float(icl.demo_classes[row, j] == icl.query_classes[row])
            assert towers.similarity["same_label"][row][0][j] == same
    alpha = torch.tensor(towers.attention)[:, 0]
    for name in ("qk_positions", "qk_text", "embedding", "same_label"):
        expected = within_prompt_correlation(alpha, torch.tensor(towers.similarity[name])[:, 0])
        assert towers.correlation[name][0] == pytest.approx(expected, nan_ok=True)


def test_label_merge_against_output_attentions():
    model = tiny_text_model("llama")
    icl = _icl(rows=3)
    merge = label_merge(model, icl, chunk_size=2)
    out, seen = _hooked(model, icl, 0)
    for layer in range(2):
        probs = out.attentions[layer]  # [B, H, T, T]
        own, other, query = [], [], []
        for row in range(3):
            for j, position in enumerate(icl.label_positions[row].tolist()):
                a, b = icl.text_spans[row, j].tolist()
                own.append(probs[row, :, position, a:b].sum(-1).mean())
                if j:
                    earlier = [probs[row, :, position, x:y].sum(-1).mean() for x, y in icl.text_spans[row, :j].tolist()]
                    other.append(torch.stack(earlier).mean())
            start, stop = icl.query_spans[row].tolist()
            query.append(probs[row, :, -1, start:stop].sum(-1).mean())
        assert merge.own_text_attention[layer] == pytest.approx(float(torch.stack(own).mean()), abs=1e-5)
        assert merge.other_text_attention[layer] == pytest.approx(float(torch.stack(other).mean()), abs=1e-5)
        assert merge.query_text_attention[layer] == pytest.approx(float(torch.stack(query).mean()), abs=1e-5)
        assert 0 <= merge.own_text_share[layer] <= 1


def test_bias_pure_math_by_hand():
    classes = torch.tensor([[0, 0, 0, 1], [1, 1, 0, 1]])
    assert majority_classes(classes, 2).tolist() == [0, 1] and recent_classes(classes).tolist() == [1, 1]
    with pytest.raises(Exception, match="majority"):
        majority_classes(torch.tensor([[0, 1]]), 2)
    factors = class_balance_factors(classes, 2)
    assert torch.allclose(factors[0], torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0]))
    assert torch.allclose(class_balance_factors(torch.tensor([[0, 1, 1, 0]]), 2), torch.ones(1, 4))
    assert torch.allclose(slot_factors(torch.tensor([0.1, 0.2, 0.3])), torch.tensor([2.0, 1.0, 2 / 3]))
    log_probs = torch.log(torch.tensor([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7]]))
    scores = bias_scores(log_probs, torch.tensor([0, 0, 1]))
    assert scores["probability"] == pytest.approx((0.8 + 0.4 + 0.7) / 3 - 0.5)
    assert scores["rate"] == pytest.approx(2 / 3 - 0.5)
    assert relative_reduction(0.2, 0.15) == pytest.approx(0.25)


def test_measure_bias_conditions_equal_full_forwards(tmp_path):
    model = tiny_text_model("llama")
    majority_a, majority_b = _icl(rows=3, counts=(3, 1), seed=5), _icl(rows=3, counts=(1, 3), seed=5)
    icl = encode_icl(word_tokenizer(), majority_a.prompts + majority_b.prompts)
    favoured = majority_classes(icl.demo_classes, 2)
    heads = torch.tensor([[1, 0], [1, 2], [0, 3]])
    control = [torch.tensor([[0, 0], [1, 1], [0, 2]])]
    result = measure_bias(model, icl, favoured, heads, kind="majority",
                          factors_for=lambda h: majority_factors(icl, h), control_heads=control, chunk_size=4)
    assert isinstance(result, ICLBias) and len(result.random) == 1
    plans = reweighting_plans(heads, icl.label_positions, majority_factors(icl, heads))
    with torch.no_grad():
        clean = model(**icl.batch.inputs).logits[:, -1].log_softmax(-1)[:, icl.class_token_ids]
        with edited_attention(model, plans):
            edited = model(**icl.batch.inputs).logits[:, -1].log_softmax(-1)[:, icl.class_token_ids]
    assert result.before["probability"] == pytest.approx(bias_scores(clean, favoured)["probability"], abs=1e-6)
    assert result.mitigated["probability"] == pytest.approx(bias_scores(edited, favoured)["probability"], abs=1e-6)
    assert result.mitigated["probability"] != pytest.approx(result.before["probability"], abs=1e-9)

    out, _ = _hooked(model, icl, 0)
    last = icl.batch.seq_len - 1
    alpha = torch.stack([out.attentions[layer][torch.arange(6)[:, None], head, last, icl.label_positions]
                         for layer, head in heads.tolist()], 1)  # [B, n, k]
    total = alpha.sum(1)
    is_favoured = (icl.demo_classes == favoured[:, None]).float()
    assert result.attention["before"]["favoured_total"] == pytest.approx(float((total * is_favoured).sum(-1).mean()),
                                                                         abs=1e-5)
    # the mitigation keeps the mass on the label positions of every head and evens it out between classes
    assert result.attention["after"]["favoured_total"] + result.attention["after"]["other_total"] == pytest.approx(
        result.attention["before"]["favoured_total"] + result.attention["before"]["other_total"], abs=1e-4)
    attention, scores = label_attention(model, icl, chunk_size=4)
    assert torch.allclose(attention.view(6, 2, 4, 4)[:, 1, 0], alpha[:, 0], atol=1e-5)
    assert torch.allclose(scores, clean, atol=2e-5)
    factors = recency_factors(attention.view(6, 2, 4, 4), heads, 6)
    assert torch.allclose(factors[0, 0], slot_factors(alpha[:, 0].mean(0)), atol=1e-4)
    result.save(tmp_path / "bias")
    assert load_result(tmp_path / "bias").mitigated == result.mitigated
