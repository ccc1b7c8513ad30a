"""The runnable examples in the pipelines' docstrings print what they claim (model-dependent ones are skipped)."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch


@pytest.mark.parametrize("name", ["neuronscope.pipelines.invariance", "neuronscope.pipelines.patches"])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_every_exported_name_exists():
    package = importlib.import_module("neuronscope.pipelines")
    assert [name for name in package.__all__ if not hasattr(package, name)] == []
