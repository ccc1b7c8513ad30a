"""LLaVA-OneVision (``model_type="llava_onevision"``): LLaVA-NeXT's any-resolution tiles, unpadded, then shrunk.

Per image (``pack_image_features``): the base crop's ``g x g`` cells (``g = image_size / patch_size``), then the
high-resolution canvas (``(nh*g) x (nw*g)`` cells stitched from the crops), unpadded as in LLaVA-NeXT and, when it
holds more than ``1.1 x`` the cells of ``anyres_max_N`` (N tiles of ``g x g``), bilinearly shrunk by
``ratio = sqrt(h·w / (N·g²))`` to ``int(h // ratio) x int(w // ratio)`` cells; each row is followed by one newline
token. A multi-image prompt gives each image its base crop plus one newline only. The shrink interpolates, so a
shrunk cell stands for the canvas region under it (its box is the unpadded region split evenly).
"""

from __future__ import annotations

import math

import torch
from transformers.image_processing_utils import select_best_resolution

from neuronscope.errors import InputError
from neuronscope.models.image_grid import ImageLayout, LayoutRequest, Tile, image_token_id, images_of_row
from neuronscope.models.layouts.llava_next import _highres_box, unpadded_grid


def _highres_shape(hw: tuple[int, int], pinpoints: list, tile: int, grid: int, max_tiles: int):
    best_h, best_w = select_best_resolution(list(hw), pinpoints)
    n_h, n_w = best_h // tile, best_w // tile
    kept = unpadded_grid(hw, n_h * grid, n_w * grid)
    rows, cols = kept[1] - kept[0], kept[3] - kept[2]
    ratio = math.sqrt(rows * cols / (max_tiles * grid ** 2))
    if ratio > 1.1:
        rows, cols = int(rows // ratio), int(cols // ratio)
    return (best_h, best_w), kept, rows, cols


def llava_onevision_layout(request: LayoutRequest) -> ImageLayout:
    """Layout of one row of a LLaVA-OneVision batch (see the module docstring)."""
    config, row = request.config, request.row
    vision = config.vision_config
    tile, patch = int(vision.image_size), int(vision.patch_size)
    grid = tile // patch
    sizes = request.tensor("image_sizes")
    if sizes is None:
        raise InputError("a LLaVA-OneVision batch needs image_sizes (H, W per image); pass the processor's output")
    sizes_hw = [(int(h), int(w)) for h, w in sizes.view(-1, 2).tolist()]
    max_tiles = int(str(getattr(config, "vision_aspect_ratio", "anyres_max_9")).removeprefix("anyres_max_"))
    shapes = [_highres_shape(hw, config.image_grid_pinpoints, tile, grid, max_tiles) for hw in sizes_hw]
    counts = [grid * grid + rows * (cols + 1) for _, _, rows, cols in shapes]
    mask = request.image_mask(image_token_id(config))
    if int(mask.sum()) == len(sizes_hw) * (grid * grid + 1):  # multi-image prompts: base crops only
        counts = [grid * grid + 1] * len(sizes_hw)
    images = images_of_row(counts, mask, row)
    positions = mask[row].nonzero().flatten()
    tiles, newlines, image_sizes, cursor = [], [], [], 0
    for local, index in enumerate(images):
        height, width = sizes_hw[index]
        image_sizes.append((width, height))
        block = positions[cursor:cursor + counts[index]]
        cursor += counts[index]
        tiles.append(Tile(grid, grid, block[:grid * grid].clone(), local, "base",
                          (0.0, 0.0, float(width), float(height))))
        rest = block[grid * grid:]
        if counts[index] == grid * grid + 1:
            newlines.append(rest.clone())
            continue
        best, kept, rows, cols = shapes[index]
        with_newline = rest.view(rows, cols + 1)
        tiles.append(Tile(rows, cols, with_newline[:, :cols].reshape(-1).clone(), local, "highres",
                          _highres_box((height, width), best, kept, patch)))
        newlines.append(with_newline[:, cols].clone())
    return ImageLayout(config.model_type, row, positions, tiles,
                       newline_positions=torch.cat(newlines) if newlines else torch.empty(0, dtype=torch.long),
                       image_sizes=image_sizes)
