"""Small parsers and rules shared by the commands."""

from __future__ import annotations

import pytest
import torch

from neuronscope.cli.common import parse_key_values, parse_neurons
from neuronscope.cli.locate import method_kwargs, parse_layers, select_neurons
from neuronscope.cli.prompts import parse_target
from neuronscope.errors import InputError


def test_parse_neurons() -> None:
    assert parse_neurons("3:17, 5:2,-1:0").tolist() == [[3, 17], [5, 2], [-1, 0]]
    with pytest.raises(InputError, match="'3-17'.*'x'"):
        parse_neurons("3-17,1:2,x")
    with pytest.raises(InputError, match="empty"):
        parse_neurons(" , ")


def test_parse_layers_and_targets() -> None:
    assert parse_layers(None) is None and parse_layers("all") is None
    assert parse_layers("0, 3-5,-1") == [0, 3, 4, 5, -1]
    with pytest.raises(InputError, match="--layers"):
        parse_layers("1-x")
    assert parse_target("Prediction") == ("prediction", None)
    assert parse_target("id:42") == ("id", 42)
    assert parse_target("word:prediction") == ("word", "prediction")
    assert parse_target(" A") == ("word", " A")
    with pytest.raises(InputError, match="id:"):
        parse_target("id:x")
    with pytest.raises(InputError, match="empty"):
        parse_target("  ")


def test_key_values() -> None:
    assert parse_key_values(["steps=20", "grid=dai", "alpha=0.5", "flag=true", "list=[1, 2]"]) == {
        "steps": 20, "grid": "dai", "alpha": 0.5, "flag": True, "list": [1, 2]}
    with pytest.raises(InputError, match="name=value"):
        parse_key_values(["steps"])


def test_selection_rule_by_hand() -> None:
    mean = torch.tensor([[0.5, 2.0, -1.0], [2.0, 0.1, 1.5]])
    neurons, values = select_neurons(mean, [3, 7], None, 3)
    assert neurons.tolist() == [[3, 1], [7, 0], [7, 2]]  # the tie at 2.0 goes to the lower layer first
    assert values.tolist() == [2.0, 2.0, 1.5]
    neurons, _ = select_neurons(mean, [3, 7], 0.3, None)  # above 0.6
    assert neurons.tolist() == [[3, 1], [7, 0], [7, 2]]
    neurons, _ = select_neurons(mean, [3, 7], 0.3, 2)
    assert neurons.tolist() == [[3, 1], [7, 0]]
    neurons, _ = select_neurons(mean, [3, 7], None, None)  # default top 20 of 6
    assert len(neurons) == 6


def test_method_options_are_checked_against_the_signature() -> None:
    def method(model, batch, targets, *, site="neuron", layers=None, steps=20):
        return None

    def all_layers(model, batch, targets, *, steps=20):
        return None

    assert method_kwargs(method, "act", [1], {"steps": 5}) == {"site": "act", "layers": [1], "steps": 5}
    with pytest.raises(InputError, match="steps"):
        method_kwargs(method, "neuron", None, {"stpes": 5})
    with pytest.raises(InputError, match="drop --site"):
        method_kwargs(all_layers, "act", None, {})
    with pytest.raises(InputError, match="drop --layers"):
        method_kwargs(all_layers, "neuron", [0], {})
    assert method_kwargs(all_layers, "neuron", None, {}) == {}
