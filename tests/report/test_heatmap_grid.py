"""The heatmap grid: one row per image, the image then its panels in the order given, each panel's mask and the
object outlined (contours at the boundary of the given masks), no pyplot state."""

from __future__ import annotations

import numpy as np
from matplotlib.collections import LineCollection

from neuronscope.report.heatmap_grid import HeatmapRow, heatmap_grid_figure
from neuronscope.results.io import write_png


def _contour_points(axes) -> list[np.ndarray]:
    points = []
    for artist in axes.get_children():
        if isinstance(artist, LineCollection) or type(artist).__name__ == "QuadContourSet":
            for path in getattr(artist, "get_paths", lambda: [])():
                if len(path.vertices):
                    points.append(path.vertices)
    return points


def test_grid_layout_panel_order_and_outlines(tmp_path):
    image = np.full((16, 16, 3), 40, dtype=np.uint8)
    obj = np.zeros((16, 16), dtype=bool)
    obj[4:8, 4:8] = True
    heat = np.zeros((16, 16))
    heat[4:8, 4:8] = 1.0
    heat[0, 0] = np.nan  # no token reaches: left transparent
    panels = [(f"top {k}", heat * k, heat > 0.5) for k in (1, 10, 50)]
    rows = [HeatmapRow("image 0", image, panels, obj), HeatmapRow("image 1", image, panels[:2], None)]
    figure = heatmap_grid_figure(rows, title="red")
    assert len(figure.axes) == 2 * 4
    titles = [axes.get_title() for axes in figure.axes]
    assert titles[:4] == ["image 0", "top 1", "top 10", "top 50"]
    assert titles[4:7] == ["image 1", "top 1", "top 10"] and not figure.axes[7].axison  # the missing panel
    outline = _contour_points(figure.axes[1])  # the mask's and the object's outlines
    assert outline and all(((p >= 2.5) & (p <= 8.5)).all() for p in outline)  # around the 4..7 square, not elsewhere
    path = write_png(tmp_path / "grid.png", figure, dpi=100)
    from PIL import Image

    with Image.open(path) as written:
        assert abs(written.width - 4 * 200) < 40  # 2 inches a panel at 100 dpi (a tight bounding box)
