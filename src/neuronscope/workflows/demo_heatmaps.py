"""The demo's heatmaps: for every located concept, its top neurons over several of its images, one sheet per
concept (``heatmaps/concept-<concept>.png``), maps in numeric order of k, the object outlined and the share of each
map's mask on the object measured (:mod:`neuronscope.workflows.multimodal.localisation`).

Example:
    >>> table = draw_heatmap_sheets(run, model, processor, scenes, images, located)  # doctest: +SKIP
    >>> table["red"]["top 100"], table["red"]["object area"]  # doctest: +SKIP
    (0.91, 0.07)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from torch import nn

from neuronscope.report.heatmap_grid import HeatmapRow, heatmap_grid_figure
from neuronscope.runs.folder import RunDir
from neuronscope.vision.heatmap import TOP_KS
from neuronscope.workflows.multimodal.localisation import concept_images, object_heatmaps
from neuronscope.workflows.multimodal.results import MultimodalNeurons

#: the metrics key of the table :func:`draw_heatmap_sheets` returns
LOCALISATION_KEY = "heatmap localisation: share of the 95th-percentile mask on the object"


def draw_heatmap_sheets(
    run: RunDir,
    model: nn.Module,
    processor: Any,
    scenes: Sequence[Any],
    images: Sequence[Image.Image],
    located: MultimodalNeurons,
    *,
    images_per_concept: int = 3,
    ks: Sequence[int] = TOP_KS,
    absolute: bool = True,
) -> dict[str, dict[str, float]]:
    """Draw one sheet per concept and return, per concept, the mean share of the mask on the object for each k and
    the object's area (fractions of pixels), over the images drawn.

    Args:
        scenes, images: the bundled-world scenes and their renders (image ``i`` of ``located``).
        images_per_concept: rows per sheet (the concept's first images, in pair order, that show its object).
        ks: the mean of the top-k neurons for each k (sorted numerically on the sheet).
        absolute: heat = mean ``|activation|`` (default True) or the signed activation.
    """
    table: dict[str, dict[str, float]] = {}
    ordered = sorted(set(ks))
    what = "mean |activation|" if absolute else "mean activation"
    for concept in located.concepts:
        neurons = located.concept_neurons(concept, max(ordered))
        rows, drawn = [], []
        for index in concept_images(located, scenes, concept, images_per_concept):
            maps = object_heatmaps(model, processor, scenes[index], images[index], index, concept, neurons, ordered,
                                   absolute=absolute)  # fmt: skip
            if maps is None:
                continue
            drawn.append(maps)
            panels = [(f"top {k}: {maps.on_object[k]:.0%} on it", maps.heat[k], maps.masks[k])
                      for k in sorted(maps.heat)]  # fmt: skip
            picture = np.asarray(images[index].convert("RGB"))
            rows.append(HeatmapRow(f"image {index} (object dashed)", picture, panels, maps.obj))
        if not rows:
            continue
        title = (f"'{concept}': {what} of its top-k neurons at the image tokens; cyan = the 95th-percentile mask, "
                 "share of it on the object above each panel")
        run.write_png(f"heatmaps/{_file_name(concept)}", heatmap_grid_figure(rows, title=title), dpi=100)
        row: dict[str, float] = {"images": len(drawn)}
        for k in sorted(drawn[0].heat):
            row[f"top {k}"] = round(float(np.mean([m.on_object[k] for m in drawn])), 3)
        row["object area"] = round(float(np.mean([m.obj.mean() for m in drawn])), 3)
        table[concept] = row
    return table


def _file_name(concept: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in concept.strip())
    return "concept-" + cleaned[:60]
