"""A grid of heatmaps for the report: one row per image, the image (with its object's outline) and then one panel
per map, each the heat over the image with its mask's outline; drawn with the Agg canvas, no pyplot.

Panels keep the order they are given in (callers give them in numeric order of k: top 1, 10, 50, 100, 500, 1000).

Example:
    >>> import numpy as np
    >>> image = np.zeros((8, 8, 3), dtype=np.uint8)
    >>> heat = np.arange(64, dtype=float).reshape(8, 8)
    >>> row = HeatmapRow("image 0", image, [("top 1", heat, heat > 60)], obj=heat > 50)
    >>> len(heatmap_grid_figure([row]).axes)
    2
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: panel edge in inches (the PNG is drawn at 100 dpi: 200 px per panel)
PANEL_INCHES = 2.0


@dataclass
class HeatmapRow:
    """One image's row: a label, the image ``[H, W, 3]`` uint8, the panels ``(title, heat [H, W], mask [H, W])``
    (heat may hold ``NaN`` where no image token reaches; mask may be None) and the object's pixels ``obj``
    ``[H, W]`` bool (None: no outline)."""

    label: str
    image: np.ndarray
    panels: Sequence[tuple[str, np.ndarray, np.ndarray | None]]
    obj: np.ndarray | None = None


def heatmap_grid_figure(rows: Sequence[HeatmapRow], title: str = "", cmap: str = "jet",
                        alpha: float = 0.5) -> Figure:  # fmt: skip
    """The grid: column 0 the image (object outlined in white, dashed), then each panel: the heat blended over the
    image (``alpha``; red = high) with the mask outlined in cyan and the object outline repeated."""
    n_columns = 1 + max((len(row.panels) for row in rows), default=0)
    figure = Figure(figsize=(PANEL_INCHES * n_columns, PANEL_INCHES * len(rows) + (0.4 if title else 0.1)),
                    layout="constrained", dpi=100)  # fmt: skip
    FigureCanvasAgg(figure)
    if title:
        figure.suptitle(title, fontsize=13)
    grid = figure.subplots(len(rows), n_columns, squeeze=False)
    for axes_row, row in zip(grid, rows, strict=True):
        _panel(axes_row[0], row.image, None, None, row.obj, row.label, cmap, alpha)
        for axes, (name, heat, mask) in zip(axes_row[1:], row.panels, strict=False):
            _panel(axes, row.image, heat, mask, row.obj, name, cmap, alpha)
        for axes in axes_row[1 + len(row.panels):]:
            axes.set_axis_off()
    return figure


def _panel(axes, image: np.ndarray, heat: np.ndarray | None, mask: np.ndarray | None, obj: np.ndarray | None,
           title: str, cmap: str, alpha: float) -> None:  # fmt: skip
    height, width = image.shape[:2]
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    axes.imshow(image, interpolation="nearest", extent=extent)
    if heat is not None:
        finite = heat[np.isfinite(heat)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        axes.imshow(np.ma.masked_invalid(heat), cmap=cmap, alpha=alpha, vmin=low, vmax=max(high, low + 1e-12),
                    interpolation="bilinear", extent=extent)  # fmt: skip
    if mask is not None and mask.any() and not mask.all():
        axes.contour(mask.astype(float), levels=[0.5], colors="cyan", linewidths=1.6)
    if obj is not None and obj.any() and not obj.all():
        axes.contour(obj.astype(float), levels=[0.5], colors="white", linewidths=1.0, linestyles="dashed")
    axes.set_xlim(-0.5, width - 0.5)
    axes.set_ylim(height - 0.5, -0.5)
    axes.set_title(title, fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])
