"""Plots as matplotlib `Figure`s, drawn with the Agg canvas: no display, no global pyplot state.

Each function returns a `Figure`; write it with `RunDir.write_png("plots/<name>.png", figure)` (or
`neuronscope.results.io.write_png`). Files under `plots/` appear in the HTML report.

Example:
    >>> import torch
    >>> figure = layer_histogram_figure(torch.tensor([[0, 5], [2, 1], [2, 7]]), n_layers=3)
    >>> [round(bar.get_height()) for bar in figure.axes[0].patches]
    [1, 0, 2]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from neuronscope.aggregate.select import layer_histogram

_SIZE = (5.2, 3.2)
_COLOURS = ("#3b6ea5", "#d9822b", "#4e9a55", "#b34a4a", "#7a5ea8", "#8c6d46")


def _figure(size: tuple[float, float] = _SIZE) -> Figure:
    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _style(axes: Any) -> None:
    """Readable sizes when the PNG is shown at about half its width in the report."""
    axes.title.set_fontsize(12)
    axes.xaxis.label.set_fontsize(11)
    axes.yaxis.label.set_fontsize(11)
    axes.tick_params(labelsize=10)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)


def layer_histogram_figure(
    neurons: torch.Tensor | Mapping[str, torch.Tensor],
    n_layers: int,
    title: str = "Selected neurons per layer",
) -> Figure:
    """Bar chart of how many selected neurons each layer holds.

    Args:
        neurons: `LongTensor [n, 2]` of (layer, index) rows, or name -> such a tensor for grouped bars
            (e.g. one set per concept).
        n_layers: number of layers of the model (the x axis runs 0..n_layers-1).
        title: figure title.

    Example:
        >>> layer_histogram_figure({"dog": torch.tensor([[1, 3]]), "cat": torch.tensor([[0, 2]])}, 2)  # doctest: +SKIP
    """
    groups = {"neurons": neurons} if isinstance(neurons, torch.Tensor) else dict(neurons)
    figure = _figure()
    axes = figure.add_subplot()
    layers = np.arange(n_layers)
    width = 0.8 / max(len(groups), 1)
    for number, (name, group) in enumerate(groups.items()):
        counts = layer_histogram(group, n_layers).numpy()
        offset = (number - (len(groups) - 1) / 2) * width
        axes.bar(layers + offset, counts, width=width, label=name, color=_COLOURS[number % len(_COLOURS)])
    axes.set_xlabel("layer")
    axes.set_ylabel("neurons")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(title)
    axes.set_xticks(layers if n_layers <= 48 else layers[:: max(1, n_layers // 16)])
    if len(groups) > 1:
        axes.legend(frameon=False)
    _style(axes)
    return figure


def score_histogram_figure(
    scores: torch.Tensor | np.ndarray | Sequence[float],
    bins: int = 50,
    title: str = "Score distribution",
    xlabel: str = "score",
    log_count: bool = False,
) -> Figure:
    """Histogram of scores (any shape, flattened; NaN and infinite values left out and counted in the title).

    Args:
        scores: the scores, e.g. `[layers, d_ff]`.
        bins: number of bins (default 50).
        title, xlabel: labels.
        log_count: logarithmic count axis (default False), for heavy-tailed attributions.
    """
    values = torch.as_tensor(np.asarray(scores, dtype=np.float64) if not isinstance(scores, torch.Tensor)
                             else scores.detach().cpu().double()).flatten()
    finite = values[torch.isfinite(values)].numpy()
    left_out = values.numel() - finite.size
    figure = _figure()
    axes = figure.add_subplot()
    axes.hist(finite, bins=bins, color=_COLOURS[0], log=log_count)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("count")
    axes.set_title(title if not left_out else f"{title} ({left_out} non-finite values left out)")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    _style(axes)
    return figure


def bar_chart_figure(
    labels: Sequence[str],
    values: Sequence[float] | torch.Tensor,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    horizontal: bool | None = None,
) -> Figure:
    """A simple bar chart (e.g. PCR per domain, top tokens' scores).

    Args:
        labels: one label per bar.
        values: one value per bar.
        horizontal: horizontal bars (default: when there are more than 8 labels or long labels).
    """
    values = [float(value) for value in (values.tolist() if isinstance(values, torch.Tensor) else values)]
    if len(labels) != len(values):
        raise ValueError(f"bar_chart_figure got {len(labels)} labels for {len(values)} values")
    if horizontal is None:
        horizontal = len(labels) > 8 or any(len(str(label)) > 10 for label in labels)
    height = max(_SIZE[1], 0.3 * len(labels) + 1) if horizontal else _SIZE[1]
    figure = _figure((_SIZE[0], height))
    axes = figure.add_subplot()
    positions = np.arange(len(labels))
    colours = [_COLOURS[0] if value >= 0 else _COLOURS[3] for value in values]
    if horizontal:
        axes.barh(positions, values, color=colours)
        axes.set_yticks(positions, [str(label) for label in labels])
        axes.invert_yaxis()
        axes.set_xlabel(ylabel)
        axes.set_ylabel(xlabel)
    else:
        axes.bar(positions, values, color=colours)
        axes.set_xticks(positions, [str(label) for label in labels])
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
    axes.set_title(title)
    zero_line = axes.axvline if horizontal else axes.axhline
    zero_line(0, color="#888888", linewidth=0.8)
    _style(axes)
    return figure


def heatmap_figure(
    values: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
    row_labels: Sequence[Any],
    column_labels: Sequence[Any],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    colour_label: str = "",
) -> Figure:
    """A heat map of a ``[rows, columns]`` matrix (e.g. the share of tokens routed to each expert of each layer),
    with the values written in the cells when there are few of them.

    Example:
        >>> heatmap_figure([[0.5, 0.25], [0.0, 1.0]], [0, 1], ["e0", "e1"], xlabel="expert").axes[0].get_xlabel()
        'expert'
    """
    matrix = values.detach().cpu().double().numpy() if isinstance(values, torch.Tensor) else \
        np.asarray(values, dtype=np.float64)
    width = min(12.0, max(_SIZE[0], 0.45 * matrix.shape[1] + 2))
    figure = _figure((width, max(_SIZE[1], 0.35 * matrix.shape[0] + 1.5)))
    axes = figure.add_subplot()
    image = axes.imshow(matrix, aspect="auto", cmap="viridis", interpolation="nearest")
    axes.set_xticks(range(len(column_labels)), [str(label) for label in column_labels])
    axes.set_yticks(range(len(row_labels)), [str(label) for label in row_labels])
    if matrix.size <= 400:
        for (row, column), value in np.ndenumerate(matrix):
            axes.text(column, row, f"{value:.2g}", ha="center", va="center", fontsize=7,
                      color="white" if value < (np.nanmax(matrix) + np.nanmin(matrix)) / 2 else "black")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    figure.colorbar(image, ax=axes, shrink=0.8, label=colour_label)
    _style(axes)
    return figure
