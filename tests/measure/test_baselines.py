"""Random baselines: layer counts, exclusion, distinctness, determinism and summaries."""

from __future__ import annotations

import math

import pytest
import torch

from neuronscope.aggregate.select import layer_histogram
from neuronscope.errors import InputError, NeuronscopeError
from neuronscope.measure.baselines import random_neurons_like, summarise_draws

LOCATED = torch.tensor([[2, 5], [0, 1], [2, 7], [2, 9], [3, 0]])


def test_layer_counts_preserved_and_neurons_distinct():
    draws = random_neurons_like(LOCATED, d_ff=16, n_draws=50, seed=3, n_layers=4)
    assert draws.shape == (50, 5, 2) and draws.dtype == torch.long
    expected = layer_histogram(LOCATED, 4)
    for draw in draws:
        assert torch.equal(layer_histogram(draw, 4), expected)
        assert len({tuple(row) for row in draw.tolist()}) == 5  # distinct within a draw
        assert draw[:, 1].min() >= 0 and draw[:, 1].max() < 16
    # Over many draws, every index of a sampled layer turns up (the sampler is not stuck on a subset).
    assert set(draws[:, 0, 1].tolist()) == set(range(16))  # the single layer-0 neuron of every draw


def test_exclusion_honoured():
    exclude = torch.tensor([[2, i] for i in range(0, 16, 2)] + [[0, 3]])  # even indices of layer 2, (0, 3)
    draws = random_neurons_like(LOCATED, d_ff=16, n_draws=100, seed=0, exclude=exclude, exclude_given=True)
    given = {tuple(row) for row in LOCATED.tolist()}
    excluded = {tuple(row) for row in exclude.tolist()}
    for row in draws.reshape(-1, 2).tolist():
        assert tuple(row) not in given and tuple(row) not in excluded


def test_exclusion_leaving_exactly_enough_is_forced():
    # Layer 1 has 4 indices; exclude 2 of them and ask for 2: the draw must be the other two, every time.
    located = torch.tensor([[1, 0], [1, 1]])
    draws = random_neurons_like(located, d_ff=4, n_draws=5, exclude_given=True)
    assert draws.tolist() == [[[1, 2], [1, 3]]] * 5
    with pytest.raises(NeuronscopeError, match="layer 1 needs 2 random neurons but only 1"):
        random_neurons_like(located, d_ff=4, exclude=torch.tensor([[1, 0], [1, 1], [1, 2]]))


def test_deterministic_by_seed_and_generator():
    first = random_neurons_like(LOCATED, d_ff=1000, n_draws=3, seed=7)
    again = random_neurons_like(LOCATED, d_ff=1000, n_draws=3, seed=7)
    other = random_neurons_like(LOCATED, d_ff=1000, n_draws=3, seed=8)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    generator = torch.Generator().manual_seed(7)
    assert torch.equal(random_neurons_like(LOCATED, d_ff=1000, n_draws=3, generator=generator), first)
    # the generator advanced: a second call differs
    assert not torch.equal(random_neurons_like(LOCATED, d_ff=1000, n_draws=3, generator=generator), first)
    # draws within one call differ from each other
    assert not torch.equal(first[0], first[1])


def test_empty_and_errors():
    assert random_neurons_like(torch.empty(0, 2, dtype=torch.long), d_ff=4, n_draws=2).shape == (2, 0, 2)
    with pytest.raises(InputError, match="d_ff is 4"):
        random_neurons_like(torch.tensor([[0, 4]]), d_ff=4)
    with pytest.raises(NeuronscopeError, match="n_draws"):
        random_neurons_like(LOCATED, d_ff=16, n_draws=-1)


def test_summarise_draws_by_hand():
    summary = summarise_draws(torch.tensor([0.0, 1.0, 2.0, 5.0]))
    assert summary.mean == 2.0 and summary.min == 0.0 and summary.max == 5.0 and summary.n == 4
    assert summary.std == pytest.approx(math.sqrt((4 + 1 + 0 + 9) / 3))
    with pytest.raises(InputError, match="one value per draw"):
        summarise_draws(torch.zeros(2, 2))


def test_random_sets_like_follows_the_rows_kind():
    from neuronscope.measure.baselines import random_sets_like
    from neuronscope.results.neuron_layout import NeuronLayout

    dense = torch.tensor([[0, 1], [2, 3], [2, 4]])
    same = random_sets_like(dense, d_ff=16, n_draws=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(same, random_neurons_like(dense, 16, n_draws=2, seed=0))  # the dense rule, unchanged
    layout = NeuronLayout.from_units([(0, -1, 8), (1, 0, 6), (1, 1, 6)])
    experts = random_sets_like(torch.tensor([[1, 1, 2], [1, 1, 4]]), layout=layout, n_draws=5, exclude_given=True)
    assert experts.shape == (5, 2, 3) and (experts[:, :, :2] == torch.tensor([1, 1])).all()
    assert not bool(((experts[:, :, 2] == 2) | (experts[:, :, 2] == 4)).any())
    with pytest.raises(InputError, match="layout"):
        random_sets_like(torch.tensor([[1, 1, 2]]), d_ff=16)
    with pytest.raises(InputError, match="d_ff"):
        random_sets_like(dense, layout=layout)
