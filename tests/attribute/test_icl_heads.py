"""In-context heads on tiny random models against plain hooks and brute force.

Oracles: the head slice of the output projection's input read by a plain pre-hook (times W_O); attention
probabilities from the model's own ``output_attentions`` and value states from a hook on the value projection;
log-probabilities through the model's own final-norm module rescaled to the frozen scale; heads zeroed by a plain
pre-hook on the output projection."""

from __future__ import annotations

import pytest
import torch

from helpers.icl_words import toy_dataset, word_tokenizer
from helpers.tiny_models import tiny_text_model
from neuronscope.attribute.icl_heads import (
    ICLAccuracy,
    InContextHeads,
    accuracy_from_log_probabilities,
    group_means,
    head_ablation_per_prompt,
    head_count,
    icl_accuracy,
    locate_in_context_heads,
    random_heads,
    top_heads,
)
from neuronscope.attribute.icl_projection import (
    HeadPositionAttribution,
    attribute_head_positions,
    head_source_contributions,
)
from neuronscope.inputs.icl import encode_icl, sample_prompts
from neuronscope.models import get_adapter
from neuronscope.models.attention import attention_module, value_states_from_projection
from neuronscope.results.base import load_result

TOL = dict(rtol=1e-4, atol=2e-5)


def _model(family: str) -> torch.nn.Module:
    model = tiny_text_model(family)
    model.config.final_logit_softcapping = None  # logit minus = LPI_a - LPI_b holds without a final soft-cap
    adapter = get_adapter(model)
    with torch.no_grad():  # larger head writes, so that the identities are not checked on near-zero numbers
        for layer in range(adapter.n_layers):
            adapter.attn_output_weight(layer).mul_(10)
    return model


def _icl(rows: int = 4, shots: tuple[int, int] = (2, 2)):
    prompts = sample_prompts(toy_dataset(30), n_prompts=rows, counts=list(shots), label_words=["foo", "bar"], seed=2)
    return encode_icl(word_tokenizer(), prompts)


def _frozen_log_probs(model, residual: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log softmax of the readout with the final norm module's own scale replaced by ``sigma``."""
    adapter = get_adapter(model)
    norm = adapter.final_norm_module
    x = residual.float()
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    if isinstance(norm, torch.nn.LayerNorm):
        own = (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
        bias = norm.bias if norm.bias is not None else 0.0
        normed = (norm(x) - bias) * own / sigma + bias
    else:
        normed = norm(x).float() * (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() / sigma
    return adapter.unembed_module(normed).float().log_softmax(-1)


def _reference(model, icl, layer: int):
    """Eager forward with plain hooks: head site, layer input, final residual, value states, probabilities."""
    adapter = get_adapter(model)
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    seen = {}
    hooks = [
        adapter.module(layer, adapter.family.attn_out).register_forward_pre_hook(
            lambda m, args: seen.__setitem__("site", args[0].detach().clone())),
        adapter.layers[layer].register_forward_pre_hook(
            lambda m, args, kwargs: seen.__setitem__("resid", (args[0] if args else kwargs["hidden_states"]).clone()),
            with_kwargs=True),
        adapter.final_norm_module.register_forward_pre_hook(lambda m, args: seen.__setitem__("final", args[0])),
    ]
    attention = attention_module(adapter, layer)
    kind = next(k for k in ("v_proj", "c_attn") if hasattr(attention, k))
    hooks.append(getattr(attention, kind).register_forward_hook(
        lambda m, a, out: seen.__setitem__("values", value_states_from_projection(adapter, kind, out))))
    with torch.no_grad():
        out = model(**icl.batch.inputs, output_attentions=True)
    for hook in hooks:
        hook.remove()
    model.set_attn_implementation(before)
    seen["probs"] = out.attentions[layer]
    return seen


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_per_position_contributions_sum_to_the_head_output(family):
    model = _model(family)
    adapter = get_adapter(model)
    icl = _icl()
    heads = [(1, 3), (1, 0)]
    contributions, extra = head_source_contributions(model, icl.batch, heads)  # [B, k, T, d]
    seen = _reference(model, icl, 1)
    for slot, (layer, head) in enumerate(heads):
        site = seen["site"][:, -1, adapter.head_slice(head)]
        output = site @ adapter.attn_output_weight(layer)[adapter.head_slice(head)]  # [B, d]
        assert torch.allclose(contributions[:, slot].sum(1), output, **TOL)
        assert torch.allclose(extra["weights"][:, slot], seen["probs"][:, head, -1], **TOL)
    assert not torch.allclose(contributions[:, 0, 3], contributions[:, 0, 4])  # truly per position


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_logit_minus_equals_the_difference_of_the_two_labels_brute_force_lpis(family):
    model = _model(family)
    adapter = get_adapter(model)
    icl = _icl()
    heads = [(1, 2), (1, 1)]
    result = attribute_head_positions(model, icl, heads, label_pair=(0, 1))
    seen = _reference(model, icl, 1)
    final = seen["final"][:, -1].float()
    eps = float(getattr(adapter.final_norm_module, "variance_epsilon", getattr(adapter.final_norm_module, "eps", 0)))
    if isinstance(adapter.final_norm_module, torch.nn.LayerNorm):
        sigma = (final.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    else:
        sigma = (final.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    a, b = icl.class_token_ids.tolist()
    group = adapter.n_heads // adapter.n_kv_heads
    post = adapter.layers[1].post_attention_layernorm if family == "gemma2" else None
    attn_out = seen["site"][:, -1] @ adapter.attn_output_weight(1)  # no o_proj bias in these families
    for row in range(len(icl)):
        residual = seen["resid"][row, -1]
        base = _frozen_log_probs(model, residual, sigma[row])
        predicted = result.predicted[row]
        for slot, (layer, head) in enumerate(heads):
            rows = adapter.attn_output_weight(layer)[adapter.head_slice(head)]
            for j, position in enumerate(icl.label_positions[row].tolist()):
                write = seen["probs"][row, head, -1, position] * seen["values"][row, position, head // group] @ rows
                if post is not None:  # the post-attention norm frozen at the attention output's scale
                    scale = (attn_out[row].pow(2).mean() + post.eps).sqrt()
                    write = post(write[None] * 1.0)[0] * (write.pow(2).mean() + post.eps).sqrt() / scale
                new = _frozen_log_probs(model, residual + write, sigma[row])
                lpi_a, lpi_b = new[a] - base[a], new[b] - base[b]
                expected = torch.tensor(result.logit_minus[row][slot][j])
                assert torch.allclose(expected, lpi_a - lpi_b, **TOL), (family, row, head, j)
                lpi_pred = new[[a, b][predicted]] - base[[a, b][predicted]]
                assert torch.allclose(torch.tensor(result.lpi[row][slot][j]), lpi_pred, **TOL)
                assert result.attention[row][slot][j] == pytest.approx(float(seen["probs"][row, head, -1, position]),
                                                                       abs=1e-5)


def test_ablation_scores_equal_brute_force_zeroing():
    model = _model("llama")
    adapter = get_adapter(model)
    icl = _icl(rows=3)
    drops, predicted = head_ablation_per_prompt(model, icl, chunk_size=2)
    assert drops.shape == (3, adapter.n_layers, adapter.n_heads)
    tokens = icl.class_token_ids
    with torch.no_grad():
        clean = model(**icl.batch.inputs).logits[:, -1].log_softmax(-1)
    assert torch.equal(predicted, clean[:, tokens].argmax(-1))
    for layer, head in [(0, 1), (1, 3)]:
        def zero(module, args, head=head):
            site = args[0].clone()
            site[:, -1, adapter.head_slice(head)] = 0
            return (site,)
        handle = adapter.module(layer, adapter.family.attn_out).register_forward_pre_hook(zero)
        with torch.no_grad():
            ablated = model(**icl.batch.inputs).logits[:, -1].log_softmax(-1)
        handle.remove()
        target = tokens[predicted]
        expected = clean.gather(1, target[:, None])[:, 0] - ablated.gather(1, target[:, None])[:, 0]
        assert torch.allclose(drops[:, layer, head], expected, atol=2e-5)


def test_located_heads_group_by_predicted_label_and_round_trip(tmp_path):
    model = _model("llama")
    icl = _icl(rows=6)
    heads = locate_in_context_heads(model, icl, method="ablation", chunk_size=3)
    drops, predicted = head_ablation_per_prompt(model, icl, chunk_size=6)
    for label in range(2):
        rows = predicted == label
        assert heads.counts[label] == int(rows.sum())
        if rows.any():
            assert torch.allclose(torch.tensor(heads.per_label[label]), drops[rows].mean(0), atol=1e-6)
    present = [c for c in range(2) if heads.counts[c]]
    assert torch.allclose(torch.tensor(heads.combined),
                          torch.stack([torch.tensor(heads.per_label[c]) for c in present]).mean(0), atol=1e-6)
    heads.save(tmp_path / "heads")
    assert load_result(tmp_path / "heads").combined == heads.combined
    lpi = locate_in_context_heads(model, icl, method="lpi")
    assert isinstance(lpi, InContextHeads) and len(lpi.combined) == 2
    attribution = attribute_head_positions(model, icl, lpi.top(2))
    attribution.save(tmp_path / "positions")
    assert isinstance(load_result(tmp_path / "positions"), HeadPositionAttribution)
    accuracy = icl_accuracy(model, icl)["clean"]
    assert isinstance(accuracy, ICLAccuracy) and 0.0 <= accuracy.accuracy <= 1.0 and 0 < accuracy.label_mass < 1


def test_pure_helpers_by_hand():
    means, counts = group_means(torch.tensor([[1.0], [3.0], [5.0]]), torch.tensor([1, 1, 0]), 3)
    assert means[:2, 0].tolist() == [5.0, 2.0] and torch.isnan(means[2, 0]) and counts.tolist() == [1, 2, 0]
    log_probs = torch.log(torch.tensor([[0.5, 0.1], [0.2, 0.3], [0.1, 0.2], [0.4, 0.3]]))
    result = accuracy_from_log_probabilities(log_probs, torch.tensor([0, 1, 0, 0]), ["foo", "bar"])
    assert result.accuracy == 0.75 and result.per_class_accuracy == pytest.approx([2 / 3, 1.0])
    assert result.predicted_share == [0.5, 0.5] and result.label_mass == pytest.approx((0.6 + 0.5 + 0.3 + 0.7) / 4)
    assert head_count(0.01, 30, 9) == 3 and head_count(0.02, 30, 9) == 6 and head_count(0.001, 2, 4) == 1
    assert top_heads(torch.tensor([[0.0, 5.0], [7.0, 1.0]]), 2).tolist() == [[1, 0], [0, 1]]
    drawn = random_heads(5, 2, 4, torch.Generator().manual_seed(0), exclude=torch.tensor([[1, 0], [0, 1]]))
    pairs = [tuple(x) for x in drawn.tolist()]
    assert len(set(pairs)) == 5 and (1, 0) not in pairs and (0, 1) not in pairs
