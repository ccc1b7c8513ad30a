"""The examples in the aggregate modules' docstrings run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch


@pytest.mark.parametrize("name", ["neuronscope.aggregate.select", "neuronscope.aggregate.qrnca"])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
