"""Options declared once: parsers, the checks on construction, config-file values converted like flags; the
selection rule and the method-option check."""

from __future__ import annotations

import pytest
import torch

from neuronscope.aggregate.select import select_neurons
from neuronscope.attribute.registry import MethodInfo
from neuronscope.errors import InputError, OptionError
from neuronscope.inputs.targets import parse_target
from neuronscope.workflows.options import coerce, parse_key_values, parse_layers, parse_neurons
from neuronscope.workflows.registry import list_workflows
from neuronscope.workflows.specs.text import LocateOptions


def test_parse_neurons() -> None:
    assert parse_neurons("3:17, 5:2,-1:0") == [(3, 17), (5, 2), (-1, 0)]
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
    neurons, _ = select_neurons(mean, [3, 7], None, None)  # no threshold, no top-k: every neuron, best first
    assert len(neurons) == 6


def method(model, batch, targets, *, site="neuron", layers=None, steps=20):
    return None


def all_layers(model, batch, targets, *, steps=20):
    return None


def test_method_options_are_checked_against_the_signature() -> None:
    with_site = MethodInfo("m", f"{__name__}:method", "", "")
    without = MethodInfo("a", f"{__name__}:all_layers", "", "")
    assert with_site.keyword_arguments("act", [1], {"steps": 5}) == {"site": "act", "layers": [1], "steps": 5}
    with pytest.raises(OptionError, match="steps"):
        with_site.keyword_arguments("neuron", None, {"stpes": 5})
    with pytest.raises(OptionError, match="drop --site"):
        without.keyword_arguments("act", None, {})
    with pytest.raises(OptionError, match="drop --layers"):
        without.keyword_arguments("neuron", [0], {})
    assert without.keyword_arguments("neuron", None, {}) == {}


def test_every_problem_is_reported_at_construction_before_any_model() -> None:
    with pytest.raises(OptionError) as error:
        LocateOptions(prompt=["a", "b"], target=["x", "y", "z"], top_k=0, threshold=1.5, layers="1-x",
                      method="nope", resume=True, overwrite=True)
    lines = str(error.value).splitlines()
    for fragment in ("--top-k 0: must be at least 1", "--threshold 1.5: must be at most 1", "--layers '1-x'",
                     "unknown attribution method 'nope'", "choose one", "3 --target flags for 2 --prompt",
                     "missing option(s) --out"):
        assert any(fragment in line for line in lines), (fragment, lines)


def test_config_values_convert_like_flags_and_unknown_names_are_refused() -> None:
    values = coerce(LocateOptions, {"top-k": "5", "prompt": "x", "threshold": 0.5, "chat": "true", "layers": 3})
    assert values == {"top_k": 5, "prompt": ["x"], "threshold": 0.5, "chat": True, "layers": "3"}
    with pytest.raises(OptionError, match="option 'bogus': not an option.*known: .*top-k"):
        coerce(LocateOptions, {"bogus": 1}, source="run.yaml")
    with pytest.raises(OptionError, match="--top-k 'many': expected an integer"):
        coerce(LocateOptions, {"top_k": "many"})


def test_every_workflow_has_an_options_dataclass_and_a_function_that_takes_it() -> None:
    import dataclasses
    import inspect

    for workflow in list_workflows():
        assert dataclasses.is_dataclass(workflow.options), workflow.name
        parameters = list(inspect.signature(workflow.function).parameters)
        assert parameters[0] == "options" and "loaded" in parameters, workflow.name
        for spec in dataclasses.fields(workflow.options):
            assert spec.metadata.get("help"), (workflow.name, spec.name)


def test_parse_expert_neurons_and_expert_lists() -> None:
    from neuronscope.workflows.options import parse_expert_lists
    from neuronscope.workflows.specs.text import InterveneOptions

    assert parse_neurons("1:5:26, 0:-1:3") == [(1, 5, 26), (0, -1, 3)]
    with pytest.raises(InputError, match="not both"):
        parse_neurons("1:5:26,3:17")
    assert parse_expert_lists(["1:5", "0:2, 3"], "--drop-expert") == [(1, [5]), (0, [2, 3])]
    with pytest.raises(InputError, match="'1:'"):
        parse_expert_lists(["1:"], "--drop-expert")
    assert InterveneOptions(drop_expert=["1:5"], prompt=["a"], mode="reroute").neurons is None  # no neurons needed
    with pytest.raises(InputError) as error:
        InterveneOptions(neurons="1:2:3", drop_expert=["1:5"], prompt=["a"])
    assert "not both" in str(error.value)
    with pytest.raises(InputError, match="--mode zero"):
        InterveneOptions(neurons="1:2:3", prompt=["a"], mode="zero")
    with pytest.raises(InputError, match="no neurons given"):
        InterveneOptions(prompt=["a"])
