"""CNA (two prompts, ablated heads, zeroed neurons, two models) and query neurons, against separately computed
scores and exact identities of the residual stream."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers.lpi_by_hand import hand_lpi, hand_sigma
from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.attribute.comparative import (
    ComparativeScores,
    comparative,
    query_neuron_scores,
    query_scores,
    shift_targets,
    value_key,
)
from neuronscope.attribute.log_probability_increase import (
    head_log_probability_increase,
    head_source_log_probability_increase,
    log_probability_increase,
)
from neuronscope.attribute.registry import get_method, list_methods
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import token_targets
from neuronscope.models import get_adapter
from neuronscope.models.attention import attention_module, value_states_from_projection
from neuronscope.trace import ablate_heads, capture, intervene, suppress


def _batch(length: int = 6, seed: int = 1, left_pad: tuple[int, ...] = (2,)) -> Batch:
    inputs = random_batch(2, length, seed=seed, left_pad=left_pad)
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return Batch(inputs, ["a", "b"], inputs["attention_mask"].sum(-1))


@pytest.fixture(scope="module")
def llama():
    model = tiny_text_model("llama")
    adapter = get_adapter(model)
    with torch.no_grad():
        for layer in range(adapter.n_layers):
            adapter.value_vectors(layer).mul_(15)
            adapter.attn_output_weight(layer).mul_(15)
    return model


def test_identical_conditions_give_zero(llama):
    batch = _batch()
    neurons = comparative(llama, batch, batch_b=batch, layers=[1])
    heads = comparative(llama, batch, unit="head")
    assert torch.equal(neurons.values, torch.zeros_like(neurons.values))
    assert torch.equal(heads.values, torch.zeros_like(heads.values))
    assert neurons.condition_a.values.abs().max() > 0 and heads.meta["unit"] == "head"
    assert get_method("comparative").function is comparative


def test_head_ablation_equals_difference_of_separate_scores(llama):
    batch = _batch()
    targets = token_targets(batch, [7, 11])
    ablated = ablate_heads(llama, [(1, 2), (0, 0)])
    cna = comparative(llama, batch, targets, interventions_b=ablated, unit="head", final_norm="own")
    plain = head_log_probability_increase(llama, batch, targets)
    with intervene(llama, ablated):
        after = head_log_probability_increase(llama, batch, targets)
    assert torch.allclose(cna.values, after.values - plain.values, atol=1e-6)
    assert torch.equal(cna.condition_b.values[..., 1, 2], torch.zeros(2, 1))  # an ablated head writes nothing
    assert torch.allclose(cna.values[..., 1, 2], -plain.values[..., 1, 2])
    assert cna.meta["interventions_b"][0]["site"] == "attn"

    neurons = comparative(llama, batch, targets, interventions_b=ablated, layers=[0, 1], final_norm="own")
    with intervene(llama, ablated):
        after = log_probability_increase(llama, batch, targets)
    assert torch.allclose(neurons.values, after.values - log_probability_increase(llama, batch, targets).values,
                          atol=1e-6)


def test_default_reads_both_conditions_at_the_original_scale(llama):
    """The reference's CNA: condition B (heads ablated = their o_proj columns zeroed at every position, done here on
    a copy's weights) is scored with the final norm frozen at condition A's σ; ``final_norm="own"`` at B's."""
    batch = _batch()
    tokens = [7, 11]
    targets = token_targets(batch, tokens)
    ablated_copy = copy.deepcopy(llama)
    adapter = get_adapter(ablated_copy)
    with torch.no_grad():
        for layer, head in ((1, 2), (0, 0)):
            ablated_copy.model.layers[layer].self_attn.o_proj.weight[:, adapter.head_slice(head)] = 0
    sigma_a, sigma_b = hand_sigma(llama, batch), hand_sigma(ablated_copy, batch)
    assert (sigma_a - sigma_b).abs().max() > 1e-3  # the ablation moves the final scale
    ablated = ablate_heads(llama, [(1, 2), (0, 0)])
    cna = comparative(llama, batch, targets, interventions_b=ablated, layers=[1])
    expected_a = hand_lpi(llama, batch, tokens, 1, sigma_a)
    expected_b = hand_lpi(ablated_copy, batch, tokens, 1, sigma_a)
    assert torch.allclose(cna.condition_a.values[:, 0, 0], expected_a, atol=1e-5)
    assert torch.allclose(cna.condition_b.values[:, 0, 0], expected_b, atol=1e-5)
    assert torch.allclose(cna.values[:, 0, 0], expected_b - expected_a, atol=1e-5)
    assert cna.meta["final_norm"] == "condition A's scale for both"
    own = comparative(llama, batch, targets, interventions_b=ablated, layers=[1], final_norm="own")
    assert torch.allclose(own.condition_b.values[:, 0, 0], hand_lpi(ablated_copy, batch, tokens, 1, sigma_b),
                          atol=1e-5)
    assert not torch.allclose(own.values, cna.values, atol=1e-4)
    with pytest.raises(NeuronscopeError, match="final_norm"):
        comparative(llama, batch, targets, final_norm="mine")


def test_final_scale_of_the_head_scores(llama):
    """Heads too: condition B's head LPI at A's σ == head LPI of the ablated run given A's σ."""
    batch = _batch()
    targets = token_targets(batch, [7, 11])
    ablated = ablate_heads(llama, [(1, 2)])
    cna = comparative(llama, batch, targets, interventions_b=ablated, unit="head")
    sigma = hand_sigma(llama, batch)
    with intervene(llama, ablated):
        given = head_log_probability_increase(llama, batch, targets, final_scale=sigma[:, None])
    assert torch.allclose(cna.condition_b.values, given.values, atol=1e-6)
    with pytest.raises(NeuronscopeError, match="one σ per pair"):
        head_log_probability_increase(llama, batch, targets, final_scale=sigma[:1])


def test_zeroed_neurons_score_zero_in_condition_b(llama):
    batch = _batch()
    zeroed = torch.tensor([[1, 3], [1, 20], [0, 5]])
    cna = comparative(llama, batch, interventions_b=suppress(zeroed, positions="all"))
    for layer, index in zeroed.tolist():
        assert torch.all(cna.condition_b.values[:, :, layer, index] == 0)
        assert torch.equal(cna.values[:, :, layer, index], -cna.condition_a.values[:, :, layer, index])


def test_two_prompts_of_different_lengths(llama):
    """"A man works as a" vs "A woman works as a": B's targets are A's prediction at B's last position."""
    batch_a, batch_b = _batch(6, seed=1), _batch(8, seed=2, left_pad=(3,))
    cna = comparative(llama, batch_a, batch_b=batch_b, layers=[1], final_norm="own")
    predicted = llama(**batch_a.inputs).logits[:, -1].argmax(-1).tolist()
    a = log_probability_increase(llama, batch_a, token_targets(batch_a, predicted), layers=[1])
    b = log_probability_increase(llama, batch_b, token_targets(batch_b, predicted), layers=[1])
    assert torch.allclose(cna.values, b.values - a.values, atol=1e-6)
    shifted = shift_targets(token_targets(batch_a, predicted), 6, 8)
    assert shifted.positions.tolist() == [[7], [7]]
    with pytest.raises(NeuronscopeError, match="give pairs"):
        comparative(llama, batch_a, batch_b=Batch({**batch_a.inputs}, ["x"], batch_a.lengths[:1]))


def test_two_models_and_round_trip(llama, tmp_path):
    tuned = copy.deepcopy(llama)
    with torch.no_grad():
        get_adapter(tuned).value_vectors(1)[4].mul_(-3)  # a "fine-tuned" value vector
    batch = _batch()
    targets = token_targets(batch, [7, 11])
    cna = comparative(llama, batch, targets, model_b=tuned, layers=[1], final_norm="own")
    expected = (log_probability_increase(tuned, batch, targets, layers=[1]).values
                - log_probability_increase(llama, batch, targets, layers=[1]).values)
    assert torch.allclose(cna.values, expected, atol=1e-6)
    assert cna.values[..., 0, 4].abs().min() > 0
    cna.save(tmp_path / "cna")
    loaded = ComparativeScores.load(tmp_path / "cna")
    assert torch.equal(loaded.values, cna.values)
    assert torch.equal(loaded.condition_a.values, cna.condition_a.values)
    assert loaded.meta["difference"] == "condition B - condition A"
    with pytest.raises(NeuronscopeError, match="differ in"):
        comparative(llama, batch, model_b=tiny_text_model("gpt2"))


def test_other_base_method(llama):
    """Any registered method: the contribution score, which is linear in a, flips sign with the neuron."""
    if "contribution" not in {info.name for info in list_methods()}:
        pytest.skip("contribution not registered")
    batch = _batch()
    zeroed = torch.tensor([[1, 3]])
    cna = comparative(llama, batch, method="contribution", interventions_b=suppress(zeroed, positions="all"),
                      layers=[1])
    assert cna.meta["base_method"] == "contribution"
    assert torch.equal(cna.values[:, :, 0, 3], -cna.condition_a.values[:, :, 0, 3])


# -- query neurons -------------------------------------------------------------------------------------------------
def test_query_scores_by_hand():
    activations = torch.tensor([[[2.0, -1.0]]])  # [B=1, layers=1, d_ff=2]
    dots = torch.tensor([[[0.5, 3.0]]])
    got = query_scores(activations, dots, torch.tensor([4.0]), torch.tensor([[2.0, -1.0]]))
    # fractions: 2*0.5/4 = 0.25, -1*3/4 = -0.75; times LPI 2 and -1
    assert torch.allclose(got, torch.tensor([[[[0.5, -1.5]]], [[[-0.25, 0.75]]]]).view(1, 2, 1, 2))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_value_key_reproduces_the_value_state(family):
    """<x_s, κ> / σ_in(x_s) (+ the norm's and W_V's bias terms) is the value neuron's activation."""
    model = tiny_text_model(family)
    adapter = get_adapter(model)
    layer, head, coordinate = 1, 3, 2
    attention = attention_module(adapter, layer)
    kind = "v_proj" if hasattr(attention, "v_proj") else "c_attn"
    seen = {}
    hook = getattr(attention, kind).register_forward_hook(
        lambda m, a, out: seen.__setitem__("v", value_states_from_projection(adapter, kind, out)))
    with torch.no_grad(), capture(model, sites="resid_pre", layers=layer, positions="all") as acts:
        model(**_batch().inputs)
    hook.remove()
    x = acts.get("resid_pre")  # [B, T, d]
    kappa = value_key(adapter, layer, head, coordinate)
    block = adapter.layers[layer]
    norm = block.input_layernorm if family == "llama" else block.ln_1
    if family == "llama":
        sigma = (x.pow(2).mean(-1) + norm.variance_epsilon).sqrt()
        constant = 0.0
    else:
        sigma = (x.var(-1, unbiased=False) + norm.eps).sqrt()
        rows, bias = block.attn.c_attn.weight[:, 2 * adapter.d_model:].t(), block.attn.c_attn.bias[2 * adapter.d_model:]
        row = (head // (adapter.n_heads // adapter.n_kv_heads)) * adapter.head_dim + coordinate
        constant = rows[row] @ norm.bias + bias[row]
    kv = head // (adapter.n_heads // adapter.n_kv_heads)
    with torch.no_grad():
        assert torch.allclose(x @ kappa / sigma + constant, seen["v"][:, :, kv, coordinate], atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "olmo2"])
def test_query_scores_of_all_ffn_neurons_sum_to_the_ffn_share(family):
    """Σ_j a_j <w_j, κ> / <x_s, κ> = <Σ_{l' < l} FFN write_{l'}(s), κ> / <x_s, κ> (value LPI = 1)."""
    model = tiny_text_model(family)
    adapter = get_adapter(model)
    batch = _batch()
    source = torch.tensor([3, 4])
    scores = query_neuron_scores(model, batch, token_targets(batch, [5, 6]), layer=1, head=2, coordinate=1,
                                 source=source, value_lpi=1.0)
    assert scores.values.shape == (2, 1, adapter.n_layers, adapter.d_ff)
    assert torch.all(scores.values[:, :, 1:] == 0) and scores.meta["unit"] == "query_neuron"
    with torch.no_grad(), capture(model, sites=["ffn_out", "resid_pre"], positions=source) as acts:
        model(**batch.inputs)
    write = acts.get("ffn_out", 0)[:, 0]
    bias = getattr(adapter.module(0, adapter.family.down), "bias", None)
    if bias is not None:
        write = write - bias  # the projection's bias is no neuron's
    if adapter.family.post_ffn_norm:
        write = getattr(adapter.layers[0], adapter.family.post_ffn_norm)(write)
    kappa = value_key(adapter, 1, 2, 1)
    with torch.no_grad():
        expected = (write @ kappa) / (acts.get("resid_pre", 1)[:, 0] @ kappa)
    assert torch.allclose(scores.values[:, 0].sum((-1, -2)), expected, atol=1e-4)


def test_query_scores_use_the_value_neurons_lpi(llama):
    batch = _batch()
    targets = token_targets(batch, [5, 6])
    computed = query_neuron_scores(llama, batch, targets, layer=1, head=0, coordinate=3, source=4)
    lpi = head_source_log_probability_increase(llama, batch, targets, heads=[(1, 0)], sources=[4],
                                               coordinates=True).values[:, :, 0, 0, 3]
    given = query_neuron_scores(llama, batch, targets, layer=1, head=0, coordinate=3, source=4, value_lpi=1.0)
    assert torch.allclose(computed.values, given.values * lpi[:, :, None, None], atol=1e-6)
    with pytest.raises(NeuronscopeError, match="value coordinate"):
        query_neuron_scores(llama, batch, targets, layer=1, head=0, coordinate=99, source=4)
