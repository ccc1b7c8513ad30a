"""Do a concept's heatmaps land on its object? Scored on the bundled shapes world, whose scenes come with exact
object masks.

For a located concept (a colour or shape word) and an image whose scene has an object of that colour or shape, the
heatmap of the mean activation of the concept's top-``k`` neurons over the image tokens (:func:`neuron_heatmaps`) is
cut at its ``percentile``-th percentile; the score is the fraction of the mask's pixels that lie on the object
(object pixel = the object covers more than half of it). Chance is the object's share of the image (its area).

Example:
    >>> scores = heatmap_localisation(model, processor, scenes, images, located)  # doctest: +SKIP
    >>> scores["colours"]["on_object"], scores["colours"]["area"]  # doctest: +SKIP
    (0.83, 0.08)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from neuronscope.workflows.multimodal.heatmaps import neuron_heatmaps
from neuronscope.workflows.multimodal.results import MultimodalNeurons


def concept_object(scene: Any, concept: str) -> int | None:
    """The number of the first object of ``scene`` whose colour or shape is ``concept`` (None if none is)."""
    return next((k for k, obj in enumerate(scene.objects) if concept in (obj.colour, obj.shape)), None)


def mask_on_object(mask: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of the ``True`` pixels of ``mask`` that are ``True`` in ``truth`` (both ``[height, width]``;
    0 for an empty mask)."""
    return float(truth[mask].mean()) if mask.any() else 0.0


@dataclass
class ObjectHeatmaps:
    """One concept's heatmaps on one image: ``heat[k]`` ``[H, W]`` (mean over the top-k neurons), ``masks[k]``
    ``[H, W]`` bool, ``on_object[k]`` (fraction of the mask on the object) for each k, and the object's pixels."""

    index: int
    obj: np.ndarray
    heat: dict[int, np.ndarray]
    masks: dict[int, np.ndarray]
    on_object: dict[int, float]


def concept_images(located: MultimodalNeurons, scenes: Sequence[Any], concept: str, n: int) -> list[int]:
    """The first ``n`` images of ``concept``'s pairs (in pair order, each once) whose scene has its object."""
    indices = dict.fromkeys(located.pairs[row]["index"] for row in located.pair_rows(concept))
    return [i for i in indices if concept_object(scenes[i], concept) is not None][:n]


def object_heatmaps(
    model: nn.Module, processor: Any, scene: Any, image: Image.Image, index: int, concept: str,
    neurons: torch.Tensor, ks: Sequence[int], *, absolute: bool = True, percentile: float = 95.0,
    prompt: str | None = None, assistant_prefix: str | None = None,
) -> ObjectHeatmaps | None:  # fmt: skip
    """Heatmaps of the mean of ``neurons``' top-k (each k of ``ks`` not above their number) on one image, scored
    against ``concept``'s object; None when the scene has no such object or the model draws no map."""
    from neuronscope.bundled import CAPTION_PREFIX, CAPTION_PROMPT
    from neuronscope.bundled.world import object_masks

    number = concept_object(scene, concept)
    if number is None:
        return None
    truth = object_masks(scene)[number] > 0.5
    ks = sorted(k for k in set(ks) if 0 < k <= len(neurons))
    maps = neuron_heatmaps(model, processor, image, neurons, single_neurons=0, ks=ks, absolute=absolute,
                           percentile=percentile, prompt=CAPTION_PROMPT if prompt is None else prompt,
                           assistant_prefix=CAPTION_PREFIX if assistant_prefix is None else assistant_prefix)
    if not maps.drawn:
        return None
    heat = {k: maps.heat[f"mean_top{k}"].numpy() for k in ks}
    masks = {k: maps.masks[f"mean_top{k}"].numpy() for k in ks}
    return ObjectHeatmaps(index, truth, heat, masks, {k: mask_on_object(masks[k], truth) for k in ks})


def heatmap_localisation(
    model: nn.Module,
    processor: Any,
    scenes: Sequence[Any],
    images: Sequence[Image.Image],
    located: MultimodalNeurons,
    *,
    concepts: Sequence[str] | None = None,
    k: int = 100,
    images_per_concept: int = 4,
    percentile: float = 95.0,
    absolute: bool = True,
) -> dict[str, Any]:
    """Per concept, the mean fraction of the top-``k`` heatmap mask on the concept's object over its first
    ``images_per_concept`` images (:func:`concept_images`), and its object area.

    Args:
        scenes, images: the bundled-world scenes and their renders, index ``i`` = image ``i`` of ``located``.
        located: neurons found on those images (:func:`find_multimodal_neurons`, captioning prompt of the world).
        concepts: which concepts (default: every located one, most pairs first).
        k: neurons averaged per heatmap (the concept's top-k, ranked by summed contribution).
        absolute: average ``|activation|`` (default True; False: the signed activation, as Pan et al.).

    Returns:
        ``{"concepts": {concept: {"on_object", "area", "images"}}, "colours": {...}, "shapes": {...}}`` where the
        last two pool every scored image of the colour (shape) concepts; figures are fractions in [0, 1].
    """
    from neuronscope.bundled import COLOURS, SHAPES

    per_concept: dict[str, dict[str, Any]] = {}
    pooled: dict[str, list[tuple[float, float]]] = {"colours": [], "shapes": []}
    for concept in located.concepts if concepts is None else concepts:
        if concept not in located.concepts:
            continue
        neurons = located.concept_neurons(concept, k)
        scored = []
        for index in concept_images(located, scenes, concept, images_per_concept):
            maps = object_heatmaps(model, processor, scenes[index], images[index], index, concept, neurons,
                                   [len(neurons)], absolute=absolute, percentile=percentile)  # fmt: skip
            if maps is not None:
                scored.append((maps.on_object[len(neurons)], float(maps.obj.mean())))
        if scored:
            per_concept[concept] = _pooled(scored)
            kind = "colours" if concept in COLOURS else "shapes" if concept in SHAPES else None
            if kind:
                pooled[kind].extend(scored)
    return {"concepts": per_concept, **{kind: _pooled(rows) for kind, rows in pooled.items() if rows}}


def _pooled(rows: list[tuple[float, float]]) -> dict[str, Any]:
    return {"on_object": round(float(np.mean([r[0] for r in rows])), 4),
            "area": round(float(np.mean([r[1] for r in rows])), 4), "images": len(rows)}
