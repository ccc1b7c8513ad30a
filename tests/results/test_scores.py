"""NeuronScores: save/load round trip, sparse == dense top-k, metadata."""

from __future__ import annotations

import json

import pytest
import torch

from neuronscope.errors import NeuronscopeError
from neuronscope.results.scores import NeuronScores


def test_round_trip_and_top_k(tmp_path):
    values = torch.zeros(2, 1, 3, 4)
    values[0, 0, 2, 1] = 5.0
    values[1, 0, 0, 3] = 4.0
    values[1, 0, 1, 0] = -1.0
    scores = NeuronScores(values, meta={"method": "contribution", "site": "neuron"})
    neurons, top = scores.top_k(2)
    assert neurons.tolist() == [[2, 1], [0, 3]] and top.tolist() == [5.0, 4.0]
    scores.save(tmp_path / "s")
    loaded = NeuronScores.load(tmp_path / "s")
    assert torch.equal(loaded.values, values) and loaded.meta["method"] == "contribution"
    assert "torch" in json.loads((tmp_path / "s.json").read_text())["meta"]["versions"]
    sparse = scores.to_sparse(2)
    assert torch.equal(sparse.dense()[0, 0, 2, 1], torch.tensor(5.0))
    sparse.save(tmp_path / "sp")
    assert torch.equal(NeuronScores.load(tmp_path / "sp").top_k(1)[0], torch.tensor([[2, 1]]))
    with pytest.raises(NeuronscopeError):
        NeuronScores(torch.zeros(3, 4))


def test_top_k_names_the_layers_listed_in_meta():
    values = torch.zeros(1, 1, 2, 3)
    values[0, 0, 1, 2] = 3.0  # slot 1 of the layer axis = model layer 7
    values[0, 0, 0, 0] = 1.0  # slot 0 = model layer 5
    scores = NeuronScores(values, meta={"layers": [5, 7]})
    neurons, top = scores.top_k(2)
    assert neurons.tolist() == [[7, 2], [5, 0]] and top.tolist() == [3.0, 1.0]
    assert scores.to_sparse(1).top_k(1)[0].tolist() == [[7, 2]]
    with pytest.raises(NeuronscopeError, match="meta lists"):
        NeuronScores(values, meta={"layers": [5]}).top_k(1)
