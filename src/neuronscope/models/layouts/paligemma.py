"""PaliGemma, Gemma-3 and Janus: one square grid of image tokens per image.

- PaliGemma (``model_type="paligemma"``): SigLIP patches straight into the language model,
  ``(image_size / patch_size)**2`` tokens, row-major; the image processor squashes the image to a square (no crop,
  no pad), so the grid covers the whole image.
- Gemma-3 (``"gemma3"``): SigLIP patches average-pooled to ``mm_tokens_per_image`` tokens
  (``sqrt`` per side), between ``<start_of_image>`` and ``<end_of_image>``; squashed resize as PaliGemma. With
  pan-and-scan the crops are extra images of the row (their boxes are not known: ``box`` is then wrong for them,
  so pass ``original_sizes`` only without pan-and-scan).
- Janus (``"janus"``): its understanding tower (SigLIP) gives ``(image_size / patch_size)**2`` tokens per image;
  the image processor pads the image to a square around its centre before resizing.
"""

from __future__ import annotations

import math

from neuronscope.errors import InputError
from neuronscope.models.image_grid import ImageLayout, LayoutRequest, square_layout


def _side(tokens: int, family: str) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise InputError(f"{family}: {tokens} image tokens per image do not form a square grid")
    return side


def paligemma_layout(request: LayoutRequest) -> ImageLayout:
    vision = request.config.vision_config
    return square_layout(request, int(vision.image_size) // int(vision.patch_size))


def gemma3_layout(request: LayoutRequest) -> ImageLayout:
    return square_layout(request, _side(int(request.config.mm_tokens_per_image), "gemma3"))


def janus_layout(request: LayoutRequest) -> ImageLayout:
    layout = paligemma_layout(request)
    for index, tile in enumerate(layout.tiles):
        size = layout.image_sizes[index]
        if size is not None:  # padded to a square around the centre
            width, height = size
            side = max(width, height)
            left, top = (width - side) / 2, (height - side) / 2
            layout.tiles[index] = type(tile)(tile.rows, tile.cols, tile.positions, tile.image_index, tile.kind,
                                             (left, top, left + side, top + side))
    return layout
