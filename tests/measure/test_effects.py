"""Single-neuron total effects against a brute-force oracle: each neuron scaled alone by a plain forward hook."""

from __future__ import annotations

import pytest
import torch

from helpers.scaled_neuron import log_p_with_neuron_scaled
from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.errors import OptionError
from neuronscope.inputs.batch import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.measure.effects import raising_neurons, single_neuron_effects


@pytest.mark.parametrize("factor", [2.0, 0.0])
def test_effects_equal_one_forward_per_neuron(factor) -> None:
    model = tiny_text_model("llama")
    inputs = random_batch(batch=3, length=6, left_pad=(0, 2, 1))
    batch = Batch(inputs, ["?"] * 3, inputs["attention_mask"].sum(-1))
    tokens = torch.tensor([[5], [9], [17]])
    targets = TargetSet(tokens, torch.full((3, 1), 5), torch.ones(3, 1, dtype=torch.bool))
    neurons = torch.tensor([[0, 3], [1, 7], [0, 11], [1, 0], [1, 23]])
    effects = single_neuron_effects(model, batch, targets, neurons, factor=factor, chunk=2)
    for row in range(3):
        one = {k: v[row:row + 1] for k, v in inputs.items()}
        base = log_p_with_neuron_scaled(model, one, int(tokens[row, 0]))
        for j, (layer, index) in enumerate(neurons.tolist()):
            want = log_p_with_neuron_scaled(model, one, int(tokens[row, 0]), (layer, index), factor) - base
            assert effects[row, j].item() == pytest.approx(want, abs=1e-5), (row, layer, index)


def test_raising_neurons_keeps_positive_mean_effects_in_order() -> None:
    effects = torch.tensor([[0.3, -0.2, 0.1, 0.0], [0.1, -0.1, 0.5, -0.4]])
    assert raising_neurons(effects, k=5).tolist() == [2, 0]
    assert raising_neurons(effects, k=1).tolist() == [2]
    with pytest.raises(OptionError, match="layer, index"):
        single_neuron_effects(None, None, None, torch.zeros(2, 3, dtype=torch.long))
