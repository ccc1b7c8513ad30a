"""Attribution methods registered under short names; the names are the CLI's ``--method`` choices.

Every method has the signature ``method(model, batch, targets, **options) -> NeuronScores`` (scores
``[examples, targets, layers, d_ff]``, or heads for head-level methods, see each method).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from neuronscope.errors import NeuronscopeError


@dataclass(frozen=True)
class MethodInfo:
    name: str
    function: Callable[..., Any]
    summary: str
    paper: str
    uses_gradients: bool


METHODS: dict[str, MethodInfo] = {}


def register(name: str, summary: str, paper: str, uses_gradients: bool = False) -> Callable:
    """Register an attribution function under ``name``."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        METHODS[name] = MethodInfo(name, function, summary, paper, uses_gradients)
        return function

    return decorate


def get_method(name: str) -> MethodInfo:
    _load_all()
    if name not in METHODS:
        raise NeuronscopeError(f"unknown attribution method '{name}': choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def list_methods() -> list[MethodInfo]:
    _load_all()
    return [METHODS[name] for name in sorted(METHODS)]


def _load_all() -> None:
    """Import the method modules so that they register (import order does not matter)."""
    import importlib

    for module in ("contribution", "integrated_gradients", "gradient_x_activation", "log_probability_increase",
                   "comparative"):
        try:
            importlib.import_module(f"neuronscope.attribute.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"neuronscope.attribute.{module}":
                raise
