"""The runnable examples in the pipelines' docstrings print what they claim (model-dependent ones are skipped)."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch


@pytest.mark.parametrize("name", ["neuronscope.workflows.invariance", "neuronscope.workflows.patches"])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("package", ["neuronscope", "neuronscope.workflows.multimodal", "neuronscope.measure",
                                     "neuronscope.inputs", "neuronscope.results", "neuronscope.attribute",
                                     "neuronscope.models", "neuronscope.aggregate"])
def test_every_exported_name_exists(package):
    module = importlib.import_module(package)
    assert [name for name in dir(module) if not hasattr(module, name)] == []
