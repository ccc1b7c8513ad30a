"""Lazy package exports: a package names what it offers and where it lives; nothing is imported until used.

So ``import neuronscope`` (and the CLI's ``--help``) stays cheap: torch and transformers load only when a name
that needs them is first touched.

Example:
    >>> __getattr__, __dir__ = lazy_exports("neuronscope.results", {"NeuronScores": "neuronscope.results.scores"})
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from types import ModuleType
from typing import Any


class _KeepsFunctions(ModuleType):
    """A package whose exported functions share their module's name (``attribute.contribution``).

    Importing a submodule binds it on its package; here that binding is skipped for such names, so the package's
    ``contribution`` is the function whether or not the module was imported first (as an eager
    ``from .contribution import contribution`` in ``__init__`` would leave it). The module stays in
    ``sys.modules`` under its full name.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, ModuleType) and value.__name__ == f"{self.__name__}.{name}" and \
                name in self.__dict__.get("_shadowed", ()):
            return
        super().__setattr__(name, value)


def lazy_exports(package: str, table: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module ``__getattr__`` / ``__dir__`` pair for ``package`` that imports ``table[name]`` on first use."""
    shadowed = frozenset(name for name, where in table.items() if where == f"{package}.{name}")
    module = sys.modules.get(package)
    if shadowed and module is not None:
        module._shadowed = shadowed
        module.__class__ = _KeepsFunctions
        for name in shadowed:  # a submodule imported before the package's table was read
            if isinstance(module.__dict__.get(name), ModuleType):
                del module.__dict__[name]

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(import_module(table[name]), name)
        raise AttributeError(f"module '{package}' has no attribute '{name}'")

    def __dir__() -> list[str]:
        return sorted(table)

    return __getattr__, __dir__
