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
from importlib import import_module
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from neuronscope.errors import ResultFileError
from neuronscope.results.io import read_json, write_json

#: format name -> "module:Class" of every result type that can be saved (imported only when loaded).
FORMATS: dict[str, str] = {
    "neuronscope.neuron_scores": "neuronscope.results.scores:NeuronScores",
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
    """Mixin for dataclasses of plain fields: ``as_dict`` / ``save`` (one JSON file) / ``load`` / ``summary``.

    Subclasses set ``format`` and may override :meth:`summary`; fields must be JSON-able (numbers, strings,
    lists, dicts, None) so that ``load(save(x)) == x``.
    """

    format: ClassVar[str] = "neuronscope.json_result"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

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
        names = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{key: value for key, value in data.items() if key in names})
