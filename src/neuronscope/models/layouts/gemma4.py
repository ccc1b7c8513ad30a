"""Gemma-4 (``model_type="gemma4"``): an aspect-preserving grid of pooled patches per image.

The image processor resizes each image, keeping its aspect ratio, to the largest size within its patch budget
(``max_soft_tokens · k²`` patches) whose sides are multiples of ``k · patch_size`` (``k`` the pooling kernel), and
reports each patch's ``(x, y)`` in ``image_position_ids`` (``-1`` for padding). The vision model averages each
``k x k`` block of patches into one soft token, indexed ``x // k + (W / k) · (y // k)``: row-major over a
``(H / k) x (W / k)`` grid covering the whole (resized) image, between ``<start_of_image>`` and
``<end_of_image>``.
"""

from __future__ import annotations

from neuronscope.errors import InputError
from neuronscope.models.image_grid import ImageLayout, LayoutRequest, Tile, full_box, image_blocks


def gemma4_layout(request: LayoutRequest) -> ImageLayout:
    """Layout of one row of a Gemma-4 batch (see the module docstring)."""
    patches = request.tensor("image_position_ids")
    if patches is None:
        raise InputError("a Gemma-4 batch needs image_position_ids; pass the processor's output whole")
    kernel = int(getattr(request.config.vision_config, "pooling_kernel_size", 3))
    grids = []
    for positions in patches.view(-1, patches.shape[-2], 2):
        valid = positions[(positions >= 0).all(-1)]
        cols, rows = ((valid.max(0).values + 1) // kernel).tolist()
        grids.append((int(rows), int(cols)))
    positions, images, blocks = image_blocks(request, [rows * cols for rows, cols in grids])
    tiles, sizes = [], []
    for local, (index, block) in enumerate(zip(images, blocks, strict=True)):
        rows, cols = grids[index]
        original = request.original_size(local)
        sizes.append(original)
        tiles.append(Tile(rows, cols, block.clone(), local, "image", full_box(original)))
    return ImageLayout(request.config.model_type, request.row, positions, tiles, image_sizes=sizes)
