"""Figures of the vision analyses: head maps side by side (VQA vs TQA), grouped per-layer bars, overlap bars.

Each function returns a matplotlib ``Figure`` (Agg canvas, no display); write it with
``RunDir.write_png("plots/<name>.png", figure)``.

Example:
    >>> import torch
    >>> figure = head_maps_figure({"VQA": torch.rand(4, 4), "TQA": torch.rand(4, 4)})
    >>> len(figure.axes)  # two maps and their colour bar
    3
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from neuronscope.report.plots import _COLOURS, _figure, _style


def head_maps_figure(maps: Mapping[str, torch.Tensor], title: str = "Mean head LPI (layer x head)",
                     marked: Mapping[str, Sequence[tuple[int, int]]] | None = None,
                     shared_scale: bool = True) -> Figure:
    """One ``[layers, heads]`` map per condition, side by side, on one symmetric colour scale (or, with
    ``shared_scale=False``, each on its own, with its own colour bar: maps of very different sizes stay readable).

    Args:
        maps: condition -> ``[layers, heads]`` scores (e.g. mean LPI over questions).
        title: the figure's title.
        marked: condition -> (layer, head) cells to frame (e.g. each condition's top heads).
        shared_scale: one colour scale for every map (default) or one per map.
    """
    names = list(maps)
    values = [maps[name].detach().float().cpu().numpy() for name in names]
    limits = [float(np.abs(v).max()) or 1.0 for v in values]
    limits = limits if not shared_scale else [max(limits)] * len(values)
    layers, heads = values[0].shape
    width = min(4.0 + 2.2 * len(names) * max(heads, 4) / 8, 14.0)
    figure = _figure((width, min(2.0 + 0.28 * layers, 12.0)))
    axes_list = figure.subplots(1, len(names), squeeze=False)[0]
    image = None
    for axes, name, value, limit in zip(axes_list, names, values, limits, strict=True):
        image = axes.imshow(value, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", origin="lower",
                            interpolation="nearest")
        if not shared_scale:
            figure.colorbar(image, ax=axes, shrink=0.9)
        for layer, head in (marked or {}).get(name, []):
            axes.add_patch(_frame(head, layer))
        axes.set_title(name)
        axes.set_xlabel("head")
        axes.set_ylabel("layer")
        _style(axes)
    if shared_scale:
        figure.colorbar(image, ax=list(axes_list), shrink=0.9)
    figure.suptitle(title, fontsize=12)
    return figure


def _frame(x: int, y: int) -> object:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="#111111", linewidth=1.6)


def grouped_bars_figure(groups: Mapping[str, Sequence[float]], labels: Sequence[str], title: str = "",
                        xlabel: str = "", ylabel: str = "") -> Figure:
    """Bars of several series over the same labels (e.g. each layer's share of VQA and of TQA head LPI)."""
    names = list(groups)
    positions = np.arange(len(labels))
    width = 0.8 / max(len(names), 1)
    figure = _figure((max(5.2, 0.45 * len(labels) * len(names) + 2), 3.2))
    axes = figure.add_subplot()
    for number, name in enumerate(names):
        axes.bar(positions + (number - (len(names) - 1) / 2) * width, [float(v) for v in groups[name]], width,
                 label=name, color=_COLOURS[number % len(_COLOURS)])
    axes.set_xticks(positions, [str(label) for label in labels])
    axes.axhline(0, color="#888888", linewidth=0.8)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=9, frameon=False)
    _style(axes)
    return figure


__all__ = ["grouped_bars_figure", "head_maps_figure"]
