"""Pixtral-tower models: Mistral-3 (``model_type="mistral3"``) and LLaVA with a Pixtral vision tower.

The Pixtral image processor resizes each image (keeping its aspect ratio, within ``longest_edge``) to whole
multiples of the patch size and reports ``image_sizes`` (H, W after resizing). The language model sees one
``[IMG]`` token per cell of a ``(H / p) x (W / p)`` grid, ``p = patch_size · spatial_merge_size`` (Mistral-3's
patch merger joins ``merge x merge`` patches; LLaVA has none), row-major, each row followed by ``[IMG_BREAK]`` and
the last by ``[IMG_END]`` (neither is an image token). The grid covers the whole (resized) image.
"""

from __future__ import annotations

from neuronscope.errors import InputError
from neuronscope.models.image_grid import ImageLayout, LayoutRequest, Tile, full_box, image_blocks


def pixtral_layout(request: LayoutRequest, merge: int) -> ImageLayout:
    """Layout of one row of a Pixtral-tower batch with a ``merge x merge`` patch merger (1: none)."""
    sizes = request.tensor("image_sizes")
    if sizes is None:
        raise InputError("a Pixtral-tower batch needs image_sizes (H, W per image); pass the processor's output whole")
    patch = int(request.config.vision_config.patch_size) * merge
    grids = [(int(h) // patch, int(w) // patch) for h, w in sizes.view(-1, 2).tolist()]
    positions, images, blocks = image_blocks(request, [rows * cols for rows, cols in grids])
    tiles, image_sizes = [], []
    for local, (index, block) in enumerate(zip(images, blocks, strict=True)):
        rows, cols = grids[index]
        original = request.original_size(local)
        image_sizes.append(original)
        tiles.append(Tile(rows, cols, block.clone(), local, "image", full_box(original)))
    return ImageLayout(request.config.model_type, request.row, positions, tiles, image_sizes=image_sizes)


def mistral3_layout(request: LayoutRequest) -> ImageLayout:
    return pixtral_layout(request, int(getattr(request.config, "spatial_merge_size", 2)))
