"""The one PCR: values equal a hand-run intervention through either scorer; random draws counted; empty groups
skipped; a factor of 1 changes nothing."""

from __future__ import annotations

import torch

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import token_targets
from neuronscope.measure.pcr import NeuronGroup, pcr_against_random
from neuronscope.measure.probability import ForwardScorer, JoinedScorer, target_probability
from neuronscope.trace import intervene, scale_neurons


def _batch():
    inputs = random_batch(batch=4, length=5, left_pad=(0, 1, 0, 2))
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return Batch(inputs, ["?"] * 4, inputs["attention_mask"].sum(-1))


def _probabilities_by_hand(model, batch, token_ids):
    with torch.no_grad():
        logits = model(**batch.inputs).logits[:, -1].double()
    return logits.softmax(-1).gather(-1, torch.tensor(token_ids)[:, None])[:, 0]


def test_pcr_matches_a_hand_run_intervention():
    model = tiny_text_model("llama", dtype=torch.float64)
    batch = _batch()
    targets = token_targets(batch, [3, 4, 5, 6])
    neurons = torch.tensor([[0, 1], [1, 2], [1, 7]])
    scorer = ForwardScorer(model, batch, targets, batch_size=3)
    report = pcr_against_random(scorer, [NeuronGroup(neurons, own=[0, 1], unrelated=[2, 3], name="g")], factor=2.0,
                                d_ff=model.config.intermediate_size, n_random=2)
    before = _probabilities_by_hand(model, batch, [3, 4, 5, 6])
    with intervene(model, scale_neurons(neurons, 2.0)):
        after = _probabilities_by_hand(model, batch, [3, 4, 5, 6])
    expected = ((after - before) / before).tolist()
    torch.testing.assert_close(torch.tensor(report.values["own"]), torch.tensor(expected[:2]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.tensor(report.values["unrelated"]), torch.tensor(expected[2:]), rtol=1e-10,
                               atol=1e-12)
    assert report.own["mean"] == sum(expected[:2]) / 2 and report.own["n"] == 2
    assert len(report.values["random_own"]) == 4 and report.random_own["n"] == 4
    assert report.per_group[0]["name"] == "g" and report.per_group[0]["n_neurons"] == 3
    # a group without neurons is measured nowhere and said to be skipped
    empty = pcr_against_random(scorer, [NeuronGroup(torch.zeros(0, 2), own=[0], name="none")], factor=0.0,
                               d_ff=model.config.intermediate_size, n_random=1)
    assert empty.skipped_groups == ["none"] and empty.own is None and empty.per_group == []
    # a factor of 1 changes nothing
    same = pcr_against_random(scorer, [NeuronGroup(neurons, own=[0, 1])], factor=1.0,
                              d_ff=model.config.intermediate_size, n_random=1)
    assert all(abs(v) < 1e-12 for v in same.values["own"] + same.values["random_own"])


def test_random_sets_keep_the_layer_counts_and_avoid_the_group_and_exclude():
    model = tiny_text_model("llama", dtype=torch.float64)
    batch = _batch()
    scorer = ForwardScorer(model, batch, token_targets(batch, [3, 4, 5, 6]))
    neurons = torch.tensor([[0, 1], [1, 2], [1, 7]])
    exclude = torch.tensor([[0, 3], [1, 4]])
    drawn = []
    original = scorer.probabilities

    def spy(rows=None, interventions=()):
        if interventions:
            drawn.append([(item.layer, tuple(item.neurons.tolist())) for item in interventions])
        return original(rows, interventions)

    scorer.probabilities = spy
    pcr_against_random(scorer, [NeuronGroup(neurons, own=[0])], factor=0.0, d_ff=model.config.intermediate_size,
                       n_random=3, seed=5, exclude=exclude)
    randoms = drawn[1:]  # the first measurement is the located set
    assert len(randoms) == 3
    for draw in randoms:
        counts = {layer: len(index) for layer, index in draw}
        assert counts == {0: 1, 1: 2}
        picked = {(layer, i) for layer, index in draw for i in index}
        assert not picked & {(0, 1), (1, 2), (1, 7), (0, 3), (1, 4)}


def test_joined_scorer_keeps_the_order_of_the_rows():
    model = tiny_text_model("llama", dtype=torch.float64)
    batch = _batch()
    a = ForwardScorer(model, batch.select([0, 1]), token_targets(batch.select([0, 1]), [3, 4]))
    b = ForwardScorer(model, batch.select([2, 3]), token_targets(batch.select([2, 3]), [5, 6]))
    joined = JoinedScorer(a, b)
    whole = ForwardScorer(model, batch, token_targets(batch, [3, 4, 5, 6]))
    torch.testing.assert_close(joined.probabilities([3, 0, 2]), whole.probabilities([3, 0, 2]))
    torch.testing.assert_close(joined.base_probabilities(), whole.base_probabilities())
    assert target_probability(torch.zeros(1, 4), torch.tensor([2])).item() == 0.25


def test_random_expert_sets_keep_the_layer_x_expert_counts():
    """MoE rows (a dense layer, routed and shared experts of DeepSeek-V3): every random draw has as many neurons in
    each (layer, expert) unit as the located set (``match="layer"``: in each layer), none located or excluded."""
    from helpers.tiny_moe import random_ids, tiny_moe_model
    from neuronscope.models import get_adapter

    model = tiny_moe_model("deepseek_v3")
    layout = get_adapter(model).moe.layout
    inputs = random_ids(batch=2, length=5)
    batch = Batch(inputs, ["?"] * 2, inputs["attention_mask"].sum(-1))
    scorer = ForwardScorer(model, batch, token_targets(batch, [3, 4]))
    neurons = torch.tensor([[0, -1, 3], [1, 2, 5], [1, 2, 7], [1, 8, 0]])  # dense layer 0; expert 8 is shared
    exclude = torch.tensor([[1, 2, 6], [0, -1, 4]])
    drawn, original = [], scorer.probabilities

    def spy(rows=None, interventions=()):
        if interventions:
            drawn.append([(item.layer, getattr(item, "expert", -1), tuple(item.neurons.tolist()))
                          for item in interventions])
        return original(rows, interventions)

    scorer.probabilities = spy
    for match in ("unit", "layer"):
        drawn.clear()
        report = pcr_against_random(scorer, [NeuronGroup(neurons, own=[0, 1])], factor=0.0, n_random=4, seed=3,
                                    exclude=exclude, layout=layout, match=match)
        assert report.baseline == ("unit" if match == "unit" else "moe-layer")
        assert [(layer, expert, set(index)) for layer, expert, index in drawn[0]] == \
            [(0, -1, {3}), (1, 2, {5, 7}), (1, 8, {0})]  # the located set itself, first
        assert len(drawn) == 5 and len(report.values["random_own"]) == 8
        for draw in drawn[1:]:
            picked = [(layer, expert, i) for layer, expert, index in draw for i in index]
            assert not set(picked) & {tuple(row) for row in torch.cat([neurons, exclude]).tolist()}
            assert all(0 <= i < layout.width(layer, expert) for layer, expert, i in picked)
            if match == "unit":
                assert sorted((layer, expert) for layer, expert, _ in picked) == [(0, -1), (1, 2), (1, 2), (1, 8)]
            else:
                assert sorted(layer for layer, _, _ in picked) == [0, 1, 1, 1]
