"""The papers' text-model experiments on real weights (SmolLM2-135M-Instruct), one recipe per experiment.

Each recipe is ``run_<name>(out_dir, *, model=None, limit=None, seed=0, ...) -> dict``: it writes a results folder
(``config.json``, ``meta.json``, ``metrics.json``, ``tables/*.csv``, ``plots/*.png``, ``report.html``) and returns
the metrics; ``python -m neuronscope.recipes.<module> --out DIR [--limit N]`` runs one, and
``python -m neuronscope.recipes --out DIR`` runs them all in one process (the model is loaded once).

| experiment | module | function |
| --- | --- | --- |
| 1. QRNCA / NA-ICA on MMLU domains | ``qrnca`` | ``run_qrnca_domains`` |
| 2. knowledge neurons on ROME facts | ``knowledge_neurons`` | ``run_knowledge_neurons`` |
| 3. LPI on ROME facts | ``lpi_facts`` | ``run_lpi_facts`` |
| 4. arithmetic heads + CNA | ``arithmetic`` | ``run_arithmetic`` |
| 5. gender-bias edit (CNA) | ``bias`` | ``run_bias`` |
| 6. value-vector fact editing | ``fact_editing`` | ``run_fact_editing`` |

Functions are imported lazily (``from neuronscope.recipes import run_bias`` imports only that module).

Example:
    >>> from neuronscope.recipes import run_arithmetic
    >>> metrics = run_arithmetic("runs/arithmetic", limit=5)            # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

RECIPES: dict[str, tuple[str, str]] = {
    "arithmetic": ("neuronscope.recipes.arithmetic", "run_arithmetic"),
    "bias": ("neuronscope.recipes.bias", "run_bias"),
    "fact_editing": ("neuronscope.recipes.fact_editing", "run_fact_editing"),
    "lpi_facts": ("neuronscope.recipes.lpi_facts", "run_lpi_facts"),
    "knowledge_neurons": ("neuronscope.recipes.knowledge_neurons", "run_knowledge_neurons"),
    "qrnca": ("neuronscope.recipes.qrnca", "run_qrnca_domains"),
}
_FUNCTIONS = {function: module for module, function in RECIPES.values()}

__all__ = ["RECIPES", "get_recipe", *sorted(_FUNCTIONS)]


def get_recipe(name: str) -> Any:
    """The ``run_<name>`` function of a recipe by its short name (the keys of ``RECIPES``)."""
    from neuronscope.errors import NeuronscopeError

    if name not in RECIPES:
        raise NeuronscopeError(f"unknown recipe '{name}': choose one of {', '.join(RECIPES)}")
    module, function = RECIPES[name]
    return getattr(importlib.import_module(module), function)


def __getattr__(name: str) -> Any:
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(_FUNCTIONS[name]), name)
    raise AttributeError(f"module 'neuronscope.recipes' has no attribute '{name}'")
