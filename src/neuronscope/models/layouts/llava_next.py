"""LLaVA-NeXT (``model_type="llava_next"``): any-resolution tiles, unpadding and newline tokens.

Module tree (transformers 5): ``LlavaNextForConditionalGeneration.model`` holds ``vision_tower``,
``multi_modal_projector``, ``image_newline`` and ``language_model``. Per image the processor picks the best
pinpoint resolution (``config.image_grid_pinpoints``) for the original ``image_sizes`` (H, W), resizes the
image into it keeping the aspect ratio, pads it centered and cuts it into tower-sized crops; the squashed whole
image comes first as the base crop.

Sequence order per image (what ``pack_image_features`` builds):

1. base: ``g x g`` cells (``g = image_size / patch_size``), row-major, no newlines;
2. high-res: the crops' cells stitched into one ``(nh*g) x (nw*g)`` canvas, the padded rows (or columns)
   removed ("unpad"), then row-major with one newline token after each row.

The best resolution always holds at least one crop, so every image has both parts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers.image_processing_utils import get_patch_output_size, select_best_resolution

from neuronscope.errors import InputError
from neuronscope.models.image_grid import Box, ImageLayout, LayoutRequest, Tile, image_token_id, images_of_row


def unpadded_grid(
    original_hw: tuple[int, int], canvas_rows: int, canvas_cols: int
) -> tuple[int, int, int, int]:
    """``(row0, row1, col0, col1)``: the canvas cells kept after LLaVA-NeXT's unpadding.

    Mirrors the model's arithmetic: the side with relatively more room loses ``padding`` cells on each end.
    """
    height, width = original_hw
    if width / height > canvas_cols / canvas_rows:
        new_height = int(round(height * (canvas_cols / width), 7))
        padding = (canvas_rows - new_height) // 2
        return padding, canvas_rows - padding, 0, canvas_cols
    new_width = int(round(width * (canvas_rows / height), 7))
    padding = (canvas_cols - new_width) // 2
    return 0, canvas_rows, padding, canvas_cols - padding


def tokens_per_image(original_hw: tuple[int, int], pinpoints: list, tile_size: int, patch_size: int) -> int:
    """Image tokens the processor inserts for one image (base + unpadded high-res + newlines)."""
    grid = tile_size // patch_size
    best_h, best_w = select_best_resolution(list(original_hw), pinpoints)
    n_h, n_w = best_h // tile_size, best_w // tile_size
    r0, r1, c0, c1 = unpadded_grid(original_hw, n_h * grid, n_w * grid)
    return grid * grid + (r1 - r0) * (c1 - c0 + 1)


def _highres_box(
    original_hw: tuple[int, int], best_hw: tuple[int, int], kept: tuple[int, int, int, int], patch_size: int
) -> Box:
    """Original-image region under the kept canvas cells (undo the centered pad and the resize)."""
    height, width = original_hw
    best_h, best_w = best_hw
    new_h, new_w = get_patch_output_size(
        np.broadcast_to(np.uint8(0), (1, height, width)), (best_h, best_w), input_data_format="channels_first"
    )
    paste_y, paste_x = (best_h - new_h) // 2, (best_w - new_w) // 2
    r0, r1, c0, c1 = kept
    scale_x, scale_y = width / new_w, height / new_h
    return (
        (c0 * patch_size - paste_x) * scale_x,
        (r0 * patch_size - paste_y) * scale_y,
        (c1 * patch_size - paste_x) * scale_x,
        (r1 * patch_size - paste_y) * scale_y,
    )


def llava_next_layout(request: LayoutRequest) -> ImageLayout:
    """Layout of one row of a LLaVA-NeXT batch (see the module docstring)."""
    config, row = request.config, request.row
    vision = config.vision_config
    tile_size, patch = int(vision.image_size), int(vision.patch_size)
    grid = tile_size // patch
    pinpoints: Any = config.image_grid_pinpoints
    sizes = request.tensor("image_sizes")
    if sizes is None:
        raise InputError(
            "a LLaVA-NeXT batch needs image_sizes (H, W per image); pass the processor's output whole"
        )
    sizes_hw = [(int(h), int(w)) for h, w in sizes.view(-1, 2).tolist()]
    mask = request.image_mask(image_token_id(config))
    counts = [tokens_per_image(hw, pinpoints, tile_size, patch) for hw in sizes_hw]
    images = images_of_row(counts, mask, row)

    positions = mask[row].nonzero().flatten()
    tiles: list[Tile] = []
    newlines: list[torch.Tensor] = []
    image_sizes: list[tuple[int, int] | None] = []
    cursor = 0
    for local, batch_index in enumerate(images):
        height, width = sizes_hw[batch_index]
        image_sizes.append((width, height))
        block = positions[cursor : cursor + counts[batch_index]]
        cursor += counts[batch_index]
        base = block[: grid * grid]
        tiles.append(Tile(grid, grid, base.clone(), local, "base", (0.0, 0.0, float(width), float(height))))
        rest = block[grid * grid :]
        best_h, best_w = select_best_resolution([height, width], pinpoints)
        n_h, n_w = best_h // tile_size, best_w // tile_size
        kept = unpadded_grid((height, width), n_h * grid, n_w * grid)
        rows, cols = kept[1] - kept[0], kept[3] - kept[2]
        with_newline = rest.view(rows, cols + 1)
        box = _highres_box((height, width), (best_h, best_w), kept, patch)
        tiles.append(Tile(rows, cols, with_newline[:, :cols].reshape(-1).clone(), local, "highres", box))
        newlines.append(with_newline[:, cols].clone())
    return ImageLayout(
        family=config.model_type,
        row=row,
        positions=positions,
        tiles=tiles,
        newline_positions=torch.cat(newlines) if newlines else torch.empty(0, dtype=torch.long),
        image_sizes=image_sizes,
    )
