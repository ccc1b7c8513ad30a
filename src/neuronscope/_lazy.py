"""Lazy package exports: a package names what it offers and where it lives; nothing is imported until used.

So ``import neuronscope`` (and the CLI's ``--help``) stays cheap: torch and transformers load only when a name
that needs them is first touched.

Example:
    >>> __getattr__, __dir__ = lazy_exports("neuronscope.results", {"NeuronScores": "neuronscope.results.scores"})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(package: str, table: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module ``__getattr__`` / ``__dir__`` pair for ``package`` that imports ``table[name]`` on first use."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(import_module(table[name]), name)
        raise AttributeError(f"module '{package}' has no attribute '{name}'")

    def __dir__() -> list[str]:
        return sorted(table)

    return __getattr__, __dir__
