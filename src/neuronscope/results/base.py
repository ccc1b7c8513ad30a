"""The one protocol every result type follows: ``save`` / ``load`` / ``as_dict`` / ``summary``, and one loader.

- ``save(path) -> Path``: files at ``path`` (a prefix or a folder, per type), written atomically, with a JSON
  header that carries ``"format"`` (see :data:`FORMATS`) and how the result was made.
- ``load(path)`` (classmethod): the exact object back; a missing or damaged file is a
  :class:`~neuronscope.errors.ResultFileError` that names it.
- ``as_dict() -> dict``: the result's figures, JSON-ready (what goes into ``metrics.json``).
- ``summary() -> str``: a few lines for the terminal.

:func:`load_result` reads any saved result by its format. :class:`JsonResult` gives a dataclass of plain fields
(numbers, strings, lists, dicts) all four methods: its file is its ``as_dict()`` with the format added.

Example:
    >>> scores.save("runs/x/scores")                      # doctest: +SKIP
    >>> load_result("runs/x/scores").summary()            # doctest: +SKIP
    'contribution scores of 2 examples x 1 targets over 4 x 32 neurons (dense)'
"""

from __future__ import annotations

import dataclasses
import types
from importlib import import_module
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from neuronscope.errors import ResultFileError
from neuronscope.results.io import read_json, write_json

#: format name -> "module:Class" of every result type that can be saved (imported only when loaded).
FORMATS: dict[str, str] = {
    "neuronscope.neuron_scores": "neuronscope.results.scores:NeuronScores",
    "neuronscope.expert_neuron_scores": "neuronscope.results.expert_scores:ExpertNeuronScores",
    "neuronscope.comparative_scores": "neuronscope.attribute.comparative:ComparativeScores",
    "neuronscope.head_source_scores": "neuronscope.attribute.heads:HeadSourceScores",
    "neuronscope.qrnca": "neuronscope.aggregate.qrnca:QRNCAResult",
    "neuronscope.value_vector_edit": "neuronscope.edit.weights:ValueVectorEdit",
    "neuronscope.icl_accuracy": "neuronscope.attribute.icl_heads:ICLAccuracy",
    "neuronscope.in_context_heads": "neuronscope.attribute.icl_heads:InContextHeads",
    "neuronscope.icl_head_positions": "neuronscope.attribute.icl_projection:HeadPositionAttribution",
    "neuronscope.icl_two_towers": "neuronscope.attribute.icl_towers:TwoTowers",
    "neuronscope.icl_label_merge": "neuronscope.attribute.icl_towers:LabelMerge",
    "neuronscope.icl_bias": "neuronscope.attribute.icl_bias:ICLBias",
    "neuronscope.router_statistics": "neuronscope.attribute.moe_router:RouterStatistics",
    "neuronscope.neuron_tokens": "neuronscope.explain.top_tokens:NeuronTokens",
    "neuronscope.pcr": "neuronscope.measure.pcr:PCRReport",
    "neuronscope.causal_effect": "neuronscope.measure.metrics:CausalEffect",
    "neuronscope.concept_specificity": "neuronscope.measure.metrics:ConceptSpecificity",
    "neuronscope.specificity": "neuronscope.measure.specificity:SpecificityReport",
    "neuronscope.edit_scores": "neuronscope.measure.editing:EditScores",
    "neuronscope.edit_evaluation": "neuronscope.measure.editing:EditEvaluation",
    "neuronscope.pruning": "neuronscope.measure.pruning:PruningReport",
    "neuronscope.pruning_point": "neuronscope.measure.pruning:PruningPoint",
    "neuronscope.prediction": "neuronscope.measure.prediction:PredictionReport",
    "neuronscope.word_edit": "neuronscope.workflows.word_edits:UseCaseReport",
    "neuronscope.multimodal_neurons": "neuronscope.workflows.multimodal.results:MultimodalNeurons",
    "neuronscope.run_result": "neuronscope.workflows.result:RunResult",
}

R = TypeVar("R", bound="JsonResult")


@runtime_checkable
class Result(Protocol):
    """What every result type offers (see the module docstring)."""

    format: ClassVar[str]

    def save(self, path: str | Path) -> Path: ...

    def as_dict(self) -> dict[str, Any]: ...

    def summary(self) -> str: ...


def header_path(path: str | Path) -> Path:
    """The JSON file that holds a saved result's format: ``path`` itself, ``path.json``, or a folder's file."""
    path = Path(path)
    if path.is_dir():
        for name in ("result.json", "qrnca_config.json", "edit.json"):
            if (path / name).is_file():
                return path / name
        raise ResultFileError(f"{path}: no saved result in this folder (no result.json); pass the path a result "
                              "was saved to")
    return path if path.suffix == ".json" else path.with_suffix(".json")


def format_of(path: str | Path) -> str:
    """The ``format`` recorded in a saved result's JSON header."""
    header = read_json(header_path(path), what="result header")
    name = header.get("format") if isinstance(header, dict) else None
    if name is None and isinstance(header, dict) and header.get("method") == "qrnca":
        name = "neuronscope.qrnca"
    if not isinstance(name, str):
        raise ResultFileError(f"{header_path(path)}: not a neuronscope result (no \"format\"); pass a file that "
                              "neuronscope saved")
    return name


def load_result(path: str | Path) -> Any:
    """Load any saved result by the format in its header.

    Raises:
        ResultFileError: no header, an unknown format, or a damaged file (the message names it).
    """
    name = format_of(path)
    if name not in FORMATS:
        raise ResultFileError(f"{header_path(path)}: unknown result format {name!r}; known: {', '.join(FORMATS)} "
                              "(a newer neuronscope may have written it)")
    module, cls = FORMATS[name].split(":")
    target = Path(path)
    return getattr(import_module(module), cls).load(target.with_suffix("") if target.suffix == ".json" else target)


class JsonResult:
    """Mixin for dataclasses: ``as_dict`` / ``save`` (one JSON file) / ``load`` / ``summary``.

    Subclasses set ``format`` and may override :meth:`summary` (and :meth:`as_dict`, keeping every field in it).
    Fields may be numbers, strings, lists, dicts, None, tensors (written as nested lists, read back as tensors),
    or dataclasses / lists of dataclasses of such fields (rebuilt from their annotations), so that
    ``load(save(x)) == x`` field by field.
    """

    format: ClassVar[str] = "neuronscope.json_result"

    def as_dict(self) -> dict[str, Any]:
        return _plain({field.name: getattr(self, field.name) for field in dataclasses.fields(self)})  # type: ignore[arg-type]

    def summary(self) -> str:
        scalars = [f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                   for key, value in self.as_dict().items() if isinstance(value, (int, float, str))]
        return f"{type(self).__name__}: " + ", ".join(scalars)

    def save(self, path: str | Path) -> Path:
        return write_json(header_path(path) if not Path(path).is_dir() else Path(path) / "result.json",
                          {"format": self.format, **self.as_dict()})

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        data = read_json(header_path(path), what=f"{cls.__name__} file")
        if not isinstance(data, dict) or data.pop("format", None) != cls.format:
            raise ResultFileError(f"{header_path(path)}: not a saved {cls.__name__}; pass a file it saved")
        return _rebuild(cls, data)


def _plain(value: Any) -> Any:
    """Tensors as nested lists, dataclasses as dicts, all the way down (JSON-ready)."""
    if hasattr(value, "detach") and hasattr(value, "tolist"):
        return value.detach().cpu().tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain({field.name: getattr(value, field.name) for field in dataclasses.fields(value)})
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _rebuild(cls: type, data: dict[str, Any]) -> Any:
    """An instance of dataclass ``cls`` from its :func:`_plain` form, by the fields' annotations."""
    import typing

    hints = typing.get_type_hints(cls)
    values = {}
    for spec in dataclasses.fields(cls):
        if spec.name in data:
            values[spec.name] = _value(hints.get(spec.name, Any), data[spec.name])
    return cls(**values)


def _value(annotation: Any, value: Any) -> Any:
    import typing

    if value is None:
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        return _value(inner[0], value) if len(inner) == 1 else value
    if getattr(annotation, "__name__", "") == "Tensor" and getattr(annotation, "__module__", "").startswith("torch"):
        import torch

        return torch.tensor(value)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        return _rebuild(annotation, value)
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        return {key: _value(args[1], part) for key, part in value.items()}
    if origin in (list, tuple) and args and isinstance(value, list):
        item = args[0]
        items = [_value(item, part) for part in value]
        return tuple(items) if origin is tuple else items
    return value
