"""The examples in the measure modules' docstrings run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch


@pytest.mark.parametrize(
    "name",
    ["neuronscope.measure.metrics", "neuronscope.measure.edit_metrics", "neuronscope.measure.fluency",
     "neuronscope.measure.baselines", "neuronscope.measure.prediction", "neuronscope.measure.probability"],
)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
