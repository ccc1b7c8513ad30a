"""Selection helpers checked against hand-made cases and brute force (full stable sorts)."""

from __future__ import annotations

import pytest
import torch

from neuronscope.aggregate.neurons import flat_to_neurons, mask_to_neurons, neurons_to_flat, neurons_to_mask
from neuronscope.aggregate.select import (
    SparseTopK,
    frequency_of_neuron_sets,
    frequency_over_examples,
    layer_histogram,
    sparse_top_k,
    sum_over_examples,
    threshold_relative,
    threshold_relative_mask,
    top_k_neurons,
    top_k_per_layer,
)
from neuronscope.errors import InputError, NeuronscopeError


def brute_force_top_k(flat_scores: list[float], k: int, key=lambda v: v) -> list[int]:
    """Oracle: Python's stable sort by descending key, ties by ascending position."""
    order = sorted(range(len(flat_scores)), key=lambda i: (-key(flat_scores[i]), i))
    return order[:k]


# ---------------------------------------------------------------- thresholds


def test_threshold_relative_per_example_by_hand():
    scores = torch.tensor(
        [
            [[1.0, 0.2, 0.21], [-3.0, 0.5, 0.0]],  # max 1.0 -> keep > 0.2
            [[10.0, 2.0, 2.5], [3.0, -1.0, 9.0]],  # max 10 -> keep > 2.0 (2.0 itself is dropped: strict)
        ]
    )
    mask = threshold_relative_mask(scores, 0.2)
    expected = torch.tensor(
        [
            [[True, False, True], [False, True, False]],
            [[True, False, True], [True, False, True]],
        ]
    )
    assert torch.equal(mask, expected)
    zeroed = threshold_relative(scores, 0.2)
    assert torch.equal(zeroed, torch.where(expected, scores, torch.zeros(())))


def test_threshold_relative_nonpositive_max_keeps_nothing_and_bounds():
    scores = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    assert not threshold_relative_mask(scores, 0.2).any()
    assert not threshold_relative_mask(torch.zeros(2, 3), 0.0).any()
    positive = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    assert torch.equal(threshold_relative_mask(positive, 0.0), positive > 0)
    assert not threshold_relative_mask(positive, 1.0).any()


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), "0.2", True])
def test_threshold_relative_rejects_bad_fraction(fraction):
    with pytest.raises(NeuronscopeError, match=r"\[0, 1\]"):
        threshold_relative_mask(torch.ones(2, 2), fraction)


def test_threshold_relative_rejects_nan_and_1d():
    with pytest.raises(InputError, match="NaN"):
        threshold_relative_mask(torch.tensor([[float("nan"), 1.0]]), 0.2)
    with pytest.raises(InputError, match="layers, d_ff"):
        threshold_relative_mask(torch.ones(3), 0.2)


# ---------------------------------------------------------------- top-k


def test_top_k_neurons_hand_made_with_ties():
    scores = torch.tensor([[0.5, 2.0, -1.0], [2.0, 3.0, 2.0]])
    neurons, values = top_k_neurons(scores, 3)
    # 3.0 at (1,1); then the tie at 2.0 between flat 1, 3, 5: lowest flat indices first.
    assert neurons.tolist() == [[1, 1], [0, 1], [1, 0]]
    assert values.tolist() == [3.0, 2.0, 2.0]
    neurons, values = top_k_neurons(scores, 2, largest=False)
    assert neurons.tolist() == [[0, 2], [0, 0]]
    assert values.tolist() == [-1.0, 0.5]
    neurons, values = top_k_neurons(torch.tensor([[-4.0, 1.0], [4.0, 0.0]]), 2, absolute=True)
    assert neurons.tolist() == [[0, 0], [1, 0]]  # |−4| == |4|: lower flat index first, sign kept
    assert values.tolist() == [-4.0, 4.0]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("absolute", [False, True])
def test_top_k_matches_stable_sort_with_many_ties(seed, absolute):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(-3, 4, (4, 7), generator=generator).float()  # few distinct values: many ties
    flat = scores.reshape(-1).tolist()
    key = abs if absolute else (lambda v: v)
    for k in (0, 1, 5, 13, 28):
        neurons, values = top_k_neurons(scores, k, absolute=absolute)
        expected = brute_force_top_k(flat, k, key)
        assert neurons_to_flat(neurons, 7).tolist() == expected
        assert values.tolist() == [flat[i] for i in expected]


def test_top_k_ascending_matches_stable_sort():
    scores = torch.tensor([[1, 1, 0], [0, 5, -2]])  # integer scores are fine too
    neurons, values = top_k_neurons(scores, 4, largest=False)
    expected = sorted(range(6), key=lambda i: (scores.reshape(-1)[i].item(), i))[:4]
    assert neurons_to_flat(neurons, 3).tolist() == expected
    assert values.dtype == scores.dtype


def test_top_k_per_layer_by_hand():
    scores = torch.tensor([[0.5, 2.0, 2.0, 1.0], [3.0, -1.0, 4.0, 4.0]])
    neurons, values = top_k_per_layer(scores, 2)
    assert neurons.tolist() == [[0, 1], [0, 2], [1, 2], [1, 3]]
    assert values.tolist() == [2.0, 2.0, 4.0, 4.0]


def test_top_k_errors():
    with pytest.raises(NeuronscopeError, match="at most 4"):
        top_k_neurons(torch.zeros(2, 2), 5)
    with pytest.raises(NeuronscopeError, match="non-negative"):
        top_k_neurons(torch.zeros(2, 2), -1)
    with pytest.raises(InputError, match="NaN"):
        top_k_neurons(torch.tensor([[float("nan"), 0.0]]), 1)
    with pytest.raises(InputError, match="sparse_top_k"):
        top_k_neurons(torch.zeros(2, 2, 2), 1)


def test_sparse_top_k_round_trip_and_aggregates():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 2, 5, generator=generator)  # [examples, layers, d_ff]
    top = sparse_top_k(scores, 4)
    assert isinstance(top, SparseTopK) and top.k == 4
    assert top.values.shape == (3, 4) and top.flat_indices.shape == (3, 4)
    for example in range(3):
        neurons, values = top_k_neurons(scores[example], 4)
        assert torch.equal(top.neurons()[example], neurons)
        assert torch.equal(top.values[example], values)
    dense = top.to_dense()
    kept = dense != 0
    assert kept.sum().item() == 12
    assert torch.equal(dense[kept], scores[kept])
    assert torch.allclose(top.sum(), dense.sum(0))
    assert torch.equal(top.frequency(), kept.sum(0))


# ---------------------------------------------------------------- sums, frequencies, conversions


def test_sums_and_frequencies_by_hand():
    scores = torch.tensor([[[1.0, 0.0, 3.0]], [[2.0, 5.0, -1.0]]])  # [2 examples, 1 layer, 3]
    selected = scores > 0.5
    assert sum_over_examples(scores).tolist() == [[3.0, 5.0, 2.0]]
    assert sum_over_examples(scores, selected).tolist() == [[3.0, 5.0, 3.0]]
    assert frequency_over_examples(selected).tolist() == [[2, 1, 1]]
    with pytest.raises(InputError, match="shape of scores"):
        sum_over_examples(scores, selected[0])


def test_frequency_of_neuron_sets_counts_each_set_once():
    sets = [
        torch.tensor([[0, 1], [0, 1], [1, 2]]),
        torch.tensor([[1, 2]]),
        torch.empty(0, 2, dtype=torch.long),
    ]
    counts = frequency_of_neuron_sets(sets, n_layers=2, d_ff=3)
    assert counts.tolist() == [[0, 1, 0], [0, 0, 2]]
    with pytest.raises(InputError, match=r"neuron_sets\[0\].*layers"):
        frequency_of_neuron_sets([torch.tensor([[5, 0]])], n_layers=2, d_ff=3)


def test_layer_histogram_and_conversions():
    neurons = torch.tensor([[0, 5], [2, 1], [2, 7], [2, 1]])
    assert layer_histogram(neurons, 4).tolist() == [1, 0, 3, 0]
    assert layer_histogram(torch.empty(0, 2, dtype=torch.long), 2).tolist() == [0, 0]
    with pytest.raises(InputError, match="4 layers"):
        layer_histogram(torch.tensor([[4, 0]]), 4)
    with pytest.raises(InputError, match="integers"):
        layer_histogram(torch.tensor([[0.0, 1.0]]), 4)
    with pytest.raises(InputError, match=r"\[n, 2\]"):
        layer_histogram(torch.tensor([0, 1]), 4)

    flat = neurons_to_flat(neurons, d_ff=8)
    assert flat.tolist() == [5, 17, 23, 17]
    assert torch.equal(flat_to_neurons(flat, 8), neurons)
    mask = neurons_to_mask(neurons, n_layers=3, d_ff=8)
    assert mask.sum().item() == 3 and mask[2, 7] and mask[0, 5]
    assert mask_to_neurons(mask).tolist() == [[0, 5], [2, 1], [2, 7]]
    with pytest.raises(InputError, match="d_ff is 4"):
        neurons_to_flat(neurons, d_ff=4)
