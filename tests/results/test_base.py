"""The result protocol: every saved format is registered once, every result type round-trips through its file."""

from __future__ import annotations

import re
from importlib import import_module
from pathlib import Path

import pytest
import torch

from neuronscope.errors import ResultFileError
from neuronscope.explain.top_tokens import NeuronTokens
from neuronscope.measure.editing import EditEvaluation, EditScores
from neuronscope.measure.metrics import ConceptCaptions, causal_effect, specificity
from neuronscope.measure.prediction import evaluate_predictions
from neuronscope.measure.pruning import PruningPoint, PruningReport
from neuronscope.results.base import FORMATS, Result, load_result
from neuronscope.workflows.multimodal.results import MultimodalNeurons

SOURCE = Path(__file__).resolve().parents[2] / "src" / "neuronscope"


def _class(target: str) -> type:
    module, name = target.split(":")
    return getattr(import_module(module), name)


def test_every_registered_format_names_a_class_that_follows_the_protocol():
    for name, target in FORMATS.items():
        cls = _class(target)
        assert cls.format == name, target
        for method in ("save", "load", "as_dict", "summary"):
            assert callable(getattr(cls, method, None)), f"{target} has no {method}"


def test_every_format_declared_in_the_package_is_registered():
    declared = set()
    for path in SOURCE.rglob("*.py"):
        declared |= set(re.findall(r'format: ClassVar\[str\] = "(neuronscope\.[a-z_]+)"', path.read_text()))
    declared.discard("neuronscope.json_result")  # the mixin's placeholder
    assert declared - set(FORMATS) == set()


def _examples() -> list:
    dog = ConceptCaptions(["dog"], before=["a dog", "a dog"], after=["grass", "a field"])
    cat = ConceptCaptions(["cat"], before=["a cat", "a cat"], after=["a cat", "no"])
    return [
        causal_effect(["a dog", "a dog"], ["a dog", "a field"], ["dog"]),
        specificity(dog, {"cat": cat}),
        EditEvaluation("promote", "token_shift", EditScores(0.25, 0.5), EditScores(1.0, 0.75, 0.9, 0.01, 3.2),
                       [EditScores(0.25), EditScores(0.5)], [[[1, 2]], [[0, 3]]], n_neurons=1),
        PruningReport([1, 2], 8, 3, 0.5, 0.4, [PruningPoint(2, [[1, 2], [2, 0]], 0.25, 0.2, [0.1, 0.2], [0.1, 0.3],
                                                            [[[1, 3]], [[2, 5]]])]),
        evaluate_predictions(["a", "b", "a"], ["a", "a", "b"]),
    ]


@pytest.mark.parametrize("result", _examples(), ids=lambda r: type(r).__name__)
def test_json_results_round_trip_field_by_field(result, tmp_path):
    assert isinstance(result, Result)
    path = result.save(tmp_path / "result")
    again = load_result(path)
    assert type(again) is type(result) and again == result
    assert again.as_dict() == result.as_dict()
    assert result.summary() and "\n\n" not in result.summary()


def test_tensor_fields_come_back_as_tensors(tmp_path):
    tokens = NeuronTokens(torch.tensor([[1, 2], [0, 5]]), torch.tensor([[3, 4], [7, 8]]),
                          torch.tensor([[0.5, 0.25], [1.5, -1.0]]), [["x", "y"], ["z", "w"]])
    again = load_result(tokens.save(tmp_path / "tokens"))
    assert torch.equal(again.neurons, tokens.neurons) and torch.equal(again.token_ids, tokens.token_ids)
    assert torch.equal(again.values, tokens.values) and again.tokens == tokens.tokens
    assert again.summary().splitlines()[1] == "0:5  'z' 'w'"


def test_multimodal_neurons_save_to_a_folder_and_load_back(tmp_path):
    result = MultimodalNeurons(
        captions=[{"index": 0, "id": "a", "caption": "a red circle", "targets": [], "skipped": None}],
        pairs=[{"index": 0, "id": "a", "concept": "red", "word": "red", "step": 1, "token_id": 5, "token": "red",
                "position": 4}],
        values=torch.tensor([[2.0, 1.0]]), flat_indices=torch.tensor([[9, 3]]), n_layers=2, d_ff=8,
        meta={"method": "contribution"}, metrics={"images_declared": 1, "images_captioned": 1, "pairs": 1})
    again = load_result(result.save(tmp_path / "mm"))
    assert again.captions == result.captions and again.pairs == result.pairs and again.meta == result.meta
    assert torch.equal(again.values, result.values) and torch.equal(again.flat_indices, result.flat_indices)
    assert again.concepts == ["red"]


def test_a_file_of_another_format_is_refused_with_its_name(tmp_path):
    path = causal_effect(["a"], ["b"], ["a"]).save(tmp_path / "effect")
    with pytest.raises(ResultFileError, match="effect.json"):
        EditScores.load(path)
