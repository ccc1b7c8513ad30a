"""Neuron-based prediction on hand-made activations and key-neuron sets."""

from __future__ import annotations

import math

import pytest
import torch

from neuronscope.errors import InputError, NeuronscopeError
from neuronscope.measure.prediction import (
    domain_scores,
    domain_specific_neurons,
    evaluate_predictions,
    neuron_based_prediction,
    predict_domains,
)


def test_domain_specific_neurons_by_frequency():
    keys = [
        torch.tensor([[0, 1], [1, 3]]),  # bio
        torch.tensor([[0, 1], [1, 0]]),  # bio
        torch.tensor([[1, 3], [0, 1], [0, 1]]),  # bio (duplicate row counts once)
        torch.tensor([[1, 2], [1, 3]]),  # maths
        torch.tensor([[1, 2]]),  # maths
    ]
    labels = ["bio", "bio", "bio", "maths", "maths"]
    # bio: (0,1) x3, (1,3) x2, (1,0) x1 ; maths: (1,2) x2, (1,3) x1
    result = domain_specific_neurons(keys, labels, n_layers=2, d_ff=4, top=2)
    assert list(result) == ["bio", "maths"]
    assert result["bio"].tolist() == [[0, 1], [1, 3]]
    assert result["maths"].tolist() == [[1, 2], [1, 3]]
    exclusive = domain_specific_neurons(keys, labels, n_layers=2, d_ff=4, top=2, exclusive=True)
    assert exclusive["bio"].tolist() == [[0, 1]] and exclusive["maths"].tolist() == [[1, 2]]
    with pytest.raises(InputError, match="labels"):
        domain_specific_neurons(keys, labels[:2], 2, 4)
    with pytest.raises(NeuronscopeError, match="top"):
        domain_specific_neurons(keys, labels, 2, 4, top=0)


DOMAINS = {
    "bio": torch.tensor([[0, 0], [0, 1]]),
    "maths": torch.tensor([[1, 0], [1, 1], [1, 2]]),
}
ACTS = torch.tensor(
    [
        [[3.0, 1.0, 0.0], [0.5, 0.5, 0.5]],  # mean bio 2.0, maths 0.5 ; count(>0.4) bio 2, maths 3
        [[0.0, 0.2, 9.0], [1.0, 2.0, 3.0]],  # mean bio 0.1, maths 2.0 ; count bio 0, maths 3
        [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]],  # mean tie 1.0 / 1.0 -> first domain (bio)
    ]
)


def test_domain_scores_mean_and_count_by_hand():
    domains, scores = domain_scores(ACTS, DOMAINS)
    assert domains == ["bio", "maths"]
    assert torch.allclose(scores, torch.tensor([[2.0, 0.5], [0.1, 2.0], [1.0, 1.0]], dtype=torch.float64))
    _, counts = domain_scores(ACTS, DOMAINS, rule="count", threshold=0.4)
    assert counts.tolist() == [[2.0, 3.0], [0.0, 3.0], [2.0, 3.0]]
    # a single query [layers, d_ff] works too
    _, single = domain_scores(ACTS[0], DOMAINS)
    assert single.tolist() == pytest.approx([2.0, 0.5])
    # a domain without neurons never wins under "mean"
    _, empty = domain_scores(ACTS, {"none": torch.empty(0, 2, dtype=torch.long), **DOMAINS})
    assert torch.isinf(empty[:, 0]).all() and (empty[:, 0] < 0).all()


def test_predict_and_report_against_majority_baseline():
    assert predict_domains(ACTS, DOMAINS) == ["bio", "maths", "bio"]
    assert predict_domains(ACTS, DOMAINS, rule="count", threshold=0.4) == ["maths", "maths", "maths"]
    report = neuron_based_prediction(ACTS, ["bio", "maths", "maths"], DOMAINS)
    assert report.predictions == ["bio", "maths", "bio"]
    assert report.accuracy == pytest.approx(2 / 3)
    assert report.majority_label == "maths" and report.majority_baseline == pytest.approx(2 / 3)
    assert report.per_label_accuracy == {"bio": 1.0, "maths": 0.5}
    assert report.n == 3


def test_evaluate_predictions_with_train_majority_and_ties():
    # majority from training labels ("bio") scored on the gold labels: 1 of 4
    report = evaluate_predictions(
        ["a"] * 4, ["bio", "maths", "maths", "chem"], train_labels=["bio", "bio", "x"]
    )
    assert report.majority_label == "bio" and report.majority_baseline == 0.25 and report.accuracy == 0.0
    # count tie in gold: the first seen label is the majority
    assert evaluate_predictions(["x", "y"], ["y", "x"]).majority_label == "y"
    assert math.isclose(evaluate_predictions(["x", "y"], ["y", "x"]).majority_baseline, 0.5)


def test_prediction_errors():
    with pytest.raises(NeuronscopeError, match="unknown rule"):
        domain_scores(ACTS, DOMAINS, rule="max")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="no domains"):
        domain_scores(ACTS, {})
    with pytest.raises(InputError, match="maths"):
        domain_scores(ACTS, {"maths": torch.tensor([[2, 0]])})
    with pytest.raises(InputError, match=r"\[queries, layers, d_ff\]"):
        predict_domains(ACTS[0], DOMAINS)
    with pytest.raises(InputError, match="2 predictions for 3"):
        evaluate_predictions(["a", "b"], ["a", "b", "c"])
    with pytest.raises(InputError, match="no queries"):
        evaluate_predictions([], [])
