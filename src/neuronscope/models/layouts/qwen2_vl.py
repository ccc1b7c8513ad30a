"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3.5 (``model_type="qwen2_vl"`` / ``"qwen2_5_vl"`` / ``"qwen3_vl"`` /
``"qwen3_5"``): a dynamic grid per image.

Module tree (transformers 5): ``*ForConditionalGeneration.model`` holds ``visual`` (patch embed, blocks,
``merger``) and ``language_model``. The image processor resizes each image to multiples of
``patch_size * merge_size`` (no crop, no pad: the grid covers the whole image) and reports
``image_grid_thw = (t, h, w)`` in patches; the merger joins each ``merge x merge`` block of patches into one
token, so the language model sees ``(h / merge) x (w / merge)`` tokens per frame, row-major (Qwen2.5-VL's
window attention reorders tokens inside the tower and restores the order before the merger output).
"""

from __future__ import annotations

from neuronscope.errors import InputError
from neuronscope.models.image_grid import (
    ImageLayout,
    LayoutRequest,
    Tile,
    full_box,
    image_token_id,
    images_of_row,
)


def qwen2_vl_layout(request: LayoutRequest) -> ImageLayout:
    """Layout of one row of a Qwen2-VL / Qwen2.5-VL batch (see the module docstring)."""
    config, row = request.config, request.row
    grid_thw = request.tensor("image_grid_thw")
    if grid_thw is None:
        raise InputError("a Qwen2-VL batch needs image_grid_thw; pass the processor's output whole")
    merge = int(getattr(config.vision_config, "spatial_merge_size", 2))
    grids = [(int(t), int(h) // merge, int(w) // merge) for t, h, w in grid_thw.view(-1, 3).tolist()]
    mask = request.image_mask(image_token_id(config))
    counts = [t * h * w for t, h, w in grids]
    images = images_of_row(counts, mask, row)

    positions = mask[row].nonzero().flatten()
    tiles: list[Tile] = []
    sizes: list[tuple[int, int] | None] = []
    cursor = 0
    for local, batch_index in enumerate(images):
        frames, rows, cols = grids[batch_index]
        original = request.original_size(local)
        sizes.append(original)
        for _ in range(frames):
            cells = positions[cursor : cursor + rows * cols].clone()
            cursor += rows * cols
            tiles.append(Tile(rows, cols, cells, local, "image", full_box(original)))
    return ImageLayout(config.model_type, row, positions, tiles, image_sizes=sizes)
