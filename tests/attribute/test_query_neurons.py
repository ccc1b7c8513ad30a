"""Query neurons summed over the top value neurons: the sums == the per-value-neuron scores summed, the value
neurons == the top of a separately computed attention-neuron LPI, the total == the FFN share of each value
neuron's input (an identity of the residual stream), and the query-only / query-value split by hand."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.attribute.comparative import query_neuron_scores, value_key
from neuronscope.attribute.log_probability_increase import head_source_log_probability_increase
from neuronscope.attribute.query_neurons import (
    split_query_neurons,
    summed_query_neuron_scores,
    top_value_neurons,
)
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet, token_targets
from neuronscope.models import get_adapter
from neuronscope.trace import capture


def _batch() -> Batch:
    inputs = random_batch(2, 6, seed=3, left_pad=(2,))
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return Batch(inputs, ["a", "b"], inputs["attention_mask"].sum(-1))


@pytest.fixture(scope="module")
def llama():
    return tiny_text_model("llama", seed=2)


def test_top_value_neurons_by_hand():
    lpi = torch.tensor([[[0.1, 0.9], [0.5, 0.0]], [[0.9, -1.0], [0.2, 0.3]]])  # [2 heads, 2 sources, 2 coords]
    got = top_value_neurons(lpi, torch.tensor([[1, 0], [1, 3]]), torch.tensor([4, 5]), 3)
    assert [(v["layer"], v["head"], v["source"], v["coordinate"]) for v in got] == [(1, 0, 4, 1), (1, 3, 4, 0),
                                                                                   (1, 0, 5, 0)]
    assert got[0]["lpi"] == pytest.approx(0.9)


def test_split_by_hand():
    query = torch.tensor([[5.0, 0.0, 4.0], [3.0, 1.0, 0.5]])
    value = torch.tensor([[0.0, 9.0, 2.0], [0.0, 0.0, 8.0]])
    split = split_query_neurons(query, value, top_k=3, value_k=2)
    assert split["query"].tolist() == [[0, 0], [0, 2], [1, 0]]
    assert split["value"].tolist() == [[0, 1], [1, 2]]
    assert split["query_value"].tolist() == [] and split["query_only"].tolist() == [[0, 0], [0, 2], [1, 0]]
    split = split_query_neurons(query, value, top_k=3, value_k=3)  # (0, 2) is now a value neuron too
    assert split["query_value"].tolist() == [[0, 2]] and split["query_only"].tolist() == [[0, 0], [1, 0]]
    with pytest.raises(NeuronscopeError, match="shape"):
        split_query_neurons(query, value[:1], top_k=1, value_k=1)


def test_sums_equal_the_per_value_neuron_scores_summed(llama):
    batch = _batch()
    targets = token_targets(batch, [5, 9])
    found = summed_query_neuron_scores(llama, batch, targets, top_values=4)
    adapter = get_adapter(llama)
    heads = [(layer, head) for layer in range(adapter.n_layers) for head in range(adapter.n_heads)]
    lpi = head_source_log_probability_increase(llama, batch, targets, heads=heads, coordinates=True)
    for row in range(2):
        values = found.value_neurons[row]
        assert len(values) == 4 and [v["lpi"] for v in values] == sorted((v["lpi"] for v in values), reverse=True)
        real = lpi.values[row, 0][:, 2 if row == 0 else 0:]  # row 0 has two pad positions
        assert values[0]["lpi"] == pytest.approx(float(real.max()), abs=1e-6)
        expected = torch.zeros(adapter.n_layers, adapter.d_ff)
        for value in values:  # each value neuron scored on the whole batch, its own source for this row
            one = query_neuron_scores(llama, batch, targets, layer=value["layer"], head=value["head"],
                                      coordinate=value["coordinate"], source=value["source"],
                                      value_lpi=value["lpi"])
            expected += one.values[row, 0]
        assert torch.allclose(found.scores.values[row, 0], expected, atol=1e-6)
    assert found.scores.meta["summed_over"] == "top 4 value neurons"


def test_total_is_the_ffn_share_of_each_value_neurons_input(llama):
    """Σ_j Q(j) = Σ_v LPI(v) · ⟨Σ_{l' < l} FFN write(s_v), κ_v⟩ / ⟨x_{s_v}, κ_v⟩ (a residual-stream identity)."""
    batch = _batch()
    targets = token_targets(batch, [5, 9])
    found = summed_query_neuron_scores(llama, batch, targets, top_values=3)
    adapter = get_adapter(llama)
    with torch.no_grad(), capture(llama, sites=["ffn_out", "resid_pre"], positions="all") as acts:
        llama(**batch.inputs)
    for row in range(2):
        expected = 0.0
        for value in found.value_neurons[row]:
            kappa = value_key(adapter, value["layer"], value["head"], value["coordinate"]).detach()
            s, layer = value["source"], value["layer"]
            write = sum(acts.get("ffn_out", j)[row, s] for j in range(layer))
            share = 0.0 if layer == 0 else float(write @ kappa / (acts.get("resid_pre", layer)[row, s] @ kappa))
            expected += value["lpi"] * share
        assert float(found.scores.values[row, 0].sum()) == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_refuses_several_targets(llama):
    batch = _batch()
    two = TargetSet(torch.tensor([[5, 6], [5, 6]]), torch.full((2, 2), 5), torch.ones(2, 2, dtype=torch.bool),
                    [["a", "b"], ["a", "b"]])
    with pytest.raises(NeuronscopeError, match="one target per example"):
        summed_query_neuron_scores(llama, batch, two)
    with pytest.raises(NeuronscopeError, match="top_values"):
        summed_query_neuron_scores(llama, batch, top_values=0)
