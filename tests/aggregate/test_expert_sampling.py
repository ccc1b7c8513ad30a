"""Random expert-neuron baselines: the same count in each (layer, expert) unit (or layer), distinct, inside the
allowed neurons, uniform over them, reproducible by seed."""

from __future__ import annotations

import doctest

import pytest
import torch

import neuronscope.aggregate.expert_sampling as expert_sampling
from neuronscope.aggregate.expert_sampling import random_expert_neurons_like
from neuronscope.errors import InputError, NeuronscopeError
from neuronscope.models.moe import NeuronLayout

LAYOUT = NeuronLayout.from_units([(0, -1, 24), (1, 0, 12), (1, 1, 12), (1, 2, 12), (1, 3, 20)], {1: 3})
LOCATED = torch.tensor([[1, 1, 3], [1, 1, 4], [1, 3, 0], [0, -1, 5]])


def test_unit_matching_keeps_every_layer_expert_count():
    draws = random_expert_neurons_like(LOCATED, LAYOUT, n_draws=50, seed=3, exclude_given=True)
    assert draws.shape == (50, 4, 3)
    for draw in draws:
        units = sorted(map(tuple, draw[:, :2].tolist()))
        assert units == [(0, -1), (1, 1), (1, 1), (1, 3)]
        assert len({tuple(r) for r in draw.tolist()}) == 4
        assert not any(tuple(r) in {tuple(x) for x in LOCATED.tolist()} for r in draw.tolist())
        LAYOUT.flat(draw)  # every row is a real neuron
    assert torch.equal(draws, random_expert_neurons_like(LOCATED, LAYOUT, n_draws=50, seed=3, exclude_given=True))


def test_layer_matching_spreads_over_all_experts_uniformly():
    draws = random_expert_neurons_like(torch.tensor([[1, 0, 0]]), LAYOUT, match="layer", n_draws=4000, seed=0)
    experts = draws[:, 0, 1]
    share = torch.bincount(experts, minlength=4).double() / 4000
    widths = torch.tensor([12, 12, 12, 20], dtype=torch.float64)
    torch.testing.assert_close(share, widths / widths.sum(), rtol=0, atol=0.03)


def test_exclusions_and_errors():
    every_but_one = torch.tensor([[1, 2, i] for i in range(11)])
    draw = random_expert_neurons_like(torch.tensor([[1, 2, 0]]), LAYOUT, exclude=every_but_one, n_draws=5)
    assert draw[:, 0].tolist() == [[1, 2, 11]] * 5
    with pytest.raises(NeuronscopeError, match="layer 1, expert 2 needs 2"):
        random_expert_neurons_like(torch.tensor([[1, 2, 0], [1, 2, 1]]), LAYOUT, exclude=every_but_one)
    with pytest.raises(InputError, match="not in this model"):
        random_expert_neurons_like(torch.tensor([[1, 4, 0]]), LAYOUT)
    with pytest.raises(InputError, match="match"):
        random_expert_neurons_like(LOCATED, LAYOUT, match="expert")


def test_docstring_example_runs():
    result = doctest.testmod(expert_sampling, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
