"""Specific selection (aggregate/specific.py) on planted scores and against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from neuronscope.aggregate.specific import (
    SpecificSelection,
    agreement_mask,
    contrast_scores,
    inverse_frequency_scores,
    select_specific,
    specific_scores,
)
from neuronscope.errors import InputError, NeuronscopeError

LAYERS, D_FF = 3, 10
COMMON = [(2, 1), (2, 7)]  # every prompt's best neurons ("answer after this template")
OWN = (1, 4)  # the target fact's neuron
N_BACKGROUND = 12


def planted(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Target ``[1, L, d]`` and background ``[B, L, d]`` scores: small noise, the common neurons high everywhere,
    OWN only in the target (weaker than the common ones), and one neuron of its own in each background prompt."""
    generator = torch.Generator().manual_seed(seed)
    target = 0.05 * torch.rand(1, LAYERS, D_FF, generator=generator)
    background = 0.05 * torch.rand(N_BACKGROUND, LAYERS, D_FF, generator=generator)
    for layer, index in COMMON:
        target[0, layer, index] = 1.0
        background[:, layer, index] = 1.0
    target[0, OWN[0], OWN[1]] = 0.7
    for b in range(N_BACKGROUND):
        background[b, 0, b % D_FF] = 0.9
    return target, background


def as_pairs(neurons: torch.Tensor) -> list[tuple[int, int]]:
    return [tuple(row) for row in neurons.tolist()]


def test_plain_selection_takes_the_common_neurons_first() -> None:
    target, background = planted()
    neurons, _ = select_specific(target, background, SpecificSelection("plain"), top_k=3)
    assert as_pairs(neurons)[:2] == COMMON and as_pairs(neurons)[2] == OWN


@pytest.mark.parametrize("selection", [SpecificSelection("contrast", 1.0), SpecificSelection("inverse-frequency", 0.3)])
def test_specific_rules_drop_the_common_neurons_and_keep_the_targets_own(selection) -> None:
    target, background = planted()
    neurons, values = select_specific(target, background, selection, top_k=3)
    chosen = as_pairs(neurons)
    assert chosen[0] == OWN
    assert not set(COMMON) & set(chosen)
    assert values[0] == values.max()


def test_a_weaker_contrast_ranks_the_common_neurons_below_the_targets_own() -> None:
    target, background = planted()
    chosen = as_pairs(select_specific(target, background, SpecificSelection("contrast", 0.5), top_k=3)[0])
    assert chosen[0] == OWN and set(chosen[1:]) == set(COMMON)


def test_contrast_equals_a_hand_computation() -> None:
    generator = torch.Generator().manual_seed(3)
    target = torch.randn(2, LAYERS, D_FF, generator=generator)
    background = torch.randn(4, LAYERS, D_FF, generator=generator)
    want = torch.zeros(LAYERS, D_FF, dtype=torch.float64)
    for layer in range(LAYERS):
        for index in range(D_FF):
            own = sum(float(t[layer, index]) / float(t.max()) for t in target) / 2
            other = sum(float(b[layer, index]) / max(float(b.max()), 1e-300) for b in background) / 4
            want[layer, index] = own - 1.5 * other
    torch.testing.assert_close(contrast_scores(target, background, 1.5), want)
    scores, allowed = specific_scores(target, background, SpecificSelection("contrast", 1.5))
    assert torch.equal(allowed, want > 0)


def test_inverse_frequency_equals_a_hand_computation() -> None:
    target, background = planted(1)
    n = N_BACKGROUND + 1
    clusters = [t > 0.2 * t.max() for t in torch.cat([target, background])]
    occurrences = sum(cluster.long() for cluster in clusters)
    kept = target[0] * clusters[0]
    normalised = kept.double() / kept.double().sum()
    scores = inverse_frequency_scores(target, background, common_threshold=0.3)
    for layer in range(LAYERS):
        for index in range(D_FF):
            ica = math.log(n / (int(occurrences[layer, index]) + 1))
            naica = float(normalised[layer, index]) * ica
            common = int(occurrences[layer, index]) > 0.3 * n
            if not bool(clusters[0][layer, index]) or common or naica <= 0:
                assert scores[layer, index] == float("-inf")
            else:
                assert float(scores[layer, index]) == pytest.approx(naica, rel=1e-12)
    assert float(scores[OWN]) > float("-inf") and all(scores[c] == float("-inf") for c in COMMON)


def test_paraphrase_agreement_keeps_the_neurons_shared_by_k_of_n() -> None:
    # three paraphrases of one fact: neuron 5 in all three, neuron 2 and 8 in one each (their wording)
    target = torch.zeros(3, 1, D_FF)
    target[:, 0, 5] = torch.tensor([0.6, 0.9, 0.5])
    target[0, 0, 2], target[1, 0, 8] = 1.0, 1.0
    target[2, 0, 8] = 0.1  # under 0.2 x max: not in the third prompt's top set
    assert agreement_mask(target, 2)[0].nonzero()[:, 0].tolist() == [5]
    assert agreement_mask(target, 1)[0].nonzero()[:, 0].tolist() == [2, 5, 8]
    plain = select_specific(target, None, SpecificSelection("plain"), top_k=3)[0]
    agreed = select_specific(target, None, SpecificSelection("plain", agreement=3), top_k=3)[0]
    assert as_pairs(plain)[0] == (0, 5) and len(plain) == 3
    assert as_pairs(agreed) == [(0, 5)]  # fewer than top_k neurons pass
    with pytest.raises(InputError, match="agreement 4 needs at least 4 target prompts"):
        agreement_mask(target, 4)


def test_threshold_is_relative_to_the_best_allowed_neuron() -> None:
    target, background = planted()
    selection = SpecificSelection("contrast", 1.0)
    scores, allowed = specific_scores(target, background, selection)
    best = float(scores[allowed].max())
    neurons, values = select_specific(target, background, selection, top_k=None, threshold=0.5, layers=[4, 5, 6])
    assert (values > 0.5 * best).all() and len(values) == int(((scores > 0.5 * best) & allowed).sum())
    assert neurons[0].tolist() == [OWN[0] + 4, OWN[1]]  # model layer numbers


def test_bad_input_names_the_fix() -> None:
    target, background = planted()
    with pytest.raises(InputError, match="needs background prompts"):
        select_specific(target, None, SpecificSelection("contrast"))
    with pytest.raises(InputError, match="same model, method and layers"):
        select_specific(target, background[:, :2], SpecificSelection("contrast"))
    with pytest.raises(NeuronscopeError, match="rule 'best'"):
        SpecificSelection("best")
    with pytest.raises(NeuronscopeError, match="common-neuron fraction"):
        SpecificSelection("inverse-frequency", 2.0)
