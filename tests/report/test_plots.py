"""Plots: the drawn bars and bins match counts computed by hand."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from neuronscope.report.plots import (
    bar_chart_figure,
    layer_histogram_figure,
    score_histogram_figure,
)
from neuronscope.results.io import write_png
from neuronscope.runs import RunDir


def bar_heights(figure, container=0):
    return [patch.get_height() for patch in figure.axes[0].containers[container]]


def test_layer_histogram_counts():
    neurons = torch.tensor([[0, 5], [2, 1], [2, 7], [4, 0], [2, 3]])
    figure = layer_histogram_figure(neurons, n_layers=5)
    # Oracle: count by hand.
    assert bar_heights(figure) == [1, 0, 3, 0, 1]
    assert [patch.get_x() + patch.get_width() / 2 for patch in figure.axes[0].containers[0]] == \
        pytest.approx([0, 1, 2, 3, 4])


def test_layer_histogram_groups():
    figure = layer_histogram_figure({"dog": torch.tensor([[1, 3], [1, 4]]), "cat": torch.tensor([[0, 2]])}, 3)
    assert bar_heights(figure, 0) == [0, 2, 0] and bar_heights(figure, 1) == [1, 0, 0]
    assert [text.get_text() for text in figure.axes[0].get_legend().get_texts()] == ["dog", "cat"]


def test_score_histogram_leaves_out_non_finite():
    scores = torch.tensor([[0.0, 1.0, 1.0], [2.0, float("nan"), float("inf")]])
    figure = score_histogram_figure(scores, bins=2)
    heights = [patch.get_height() for patch in figure.axes[0].patches]
    assert heights == [1, 3]  # edges 0, 1, 2: [0, 1) holds {0}; [1, 2] holds {1, 1, 2}
    assert "2 non-finite values left out" in figure.axes[0].get_title()


def test_bar_chart_values_and_orientation():
    figure = bar_chart_figure(["boost", "suppress"], torch.tensor([0.25, -0.5]), title="PCR")
    assert bar_heights(figure) == [0.25, -0.5]
    long = bar_chart_figure([f"label {i}" for i in range(10)], list(range(10)))
    assert [patch.get_width() for patch in long.axes[0].containers[0]] == list(range(10))
    with pytest.raises(ValueError, match="2 labels for 1 values"):
        bar_chart_figure(["a", "b"], [1.0])


def test_png_written(tmp_path):
    figure = score_histogram_figure(np.arange(10.0))
    path = write_png(tmp_path / "h.png", figure)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100
    run = RunDir(tmp_path / "run")
    written = run.write_png("plots/h", figure)
    assert written.name == "h.png"
    assert Image.open(io.BytesIO(written.read_bytes())).format == "PNG"
