"""PCR experiment: values equal a hand-run intervention; identity when no neurons; boost vs suppress."""

from __future__ import annotations

import torch

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.experiments import NeuronGroup, pcr_experiment, target_probabilities
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import token_targets
from neuronscope.trace import intervene, scale_neurons


def _batch():
    inputs = random_batch(batch=4, length=5, left_pad=(0, 1, 0, 2))
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return Batch(inputs, ["?"] * 4, inputs["attention_mask"].sum(-1))


def test_pcr_matches_a_hand_run_intervention():
    model = tiny_text_model("llama", dtype=torch.float64)
    batch = _batch()
    targets = token_targets(batch, [3, 4, 5, 6])
    neurons = torch.tensor([[0, 1], [1, 2], [1, 7]])
    group = NeuronGroup(neurons, own=[0, 1], unrelated=[2, 3])
    report = pcr_experiment(model, batch, targets, [group], mode="boost", n_random=2)
    before = target_probabilities(model, batch, targets)
    with intervene(model, scale_neurons(neurons, 2.0)):
        after = target_probabilities(model, batch, targets)
    expected = ((after - before) / before).tolist()
    torch.testing.assert_close(torch.tensor(report.own[0]), torch.tensor(expected[:2]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.tensor(report.unrelated[0]), torch.tensor(expected[2:]), rtol=1e-10, atol=1e-12)
    assert len(report.random_own[0]) == 4 and report.summary()["random_own"]["n"] == 4
    empty = pcr_experiment(model, batch, targets, [NeuronGroup(torch.zeros(0, 2), own=[0])], n_random=1)
    assert empty.own == [[0.0]]
    # a factor of 1 changes nothing
    same = pcr_experiment(model, batch, targets, [group], factor=1.0, n_random=1)
    assert all(abs(v) < 1e-12 for v in same.own[0] + same.random_own[0])
