"""InternVL and Aya Vision: GotOcr2-style tiles plus a thumbnail, each tile pixel-shuffled.

The image processor (``GotOcr2ImageProcessor``, ``crop_to_patches=True``) picks a ``C x R`` tile grid whose
aspect ratio is closest to the image's (``min_patches`` .. ``max_patches`` tiles), stretches the image onto it,
cuts the tiles row-major and appends the whole image squashed to one tile (the thumbnail) when there is more
than one tile. Each tile's ``(S / p)**2`` patches are pixel-shuffled (``2 x 2`` blocks -> one token), row-major.

- InternVL (``model_type="internvl"``): ``<img>`` + ``<IMG_CONTEXT>`` x (tiles x tokens) + ``</img>``; shuffle
  ratio ``downsample_ratio`` (0.5), the tower's CLS dropped.
- Aya Vision (``"aya_vision"``): ``<|START_OF_IMG|>``, per crop ``<|IMG_LINE_BREAK|>``-style tile markers
  (``TILE_i``) and then the global tile (``TILE_GLOBAL``), each followed by its ``<|IMG_PATCH|>`` tokens;
  shuffle factor ``downsample_factor`` (2).

The tile grid is recomputed with transformers' own ``get_optimal_tiled_canvas`` from the original image size
(``original_sizes``); without it the crops' places and boxes are unknown (``tile_row`` / ``box`` None).
"""

from __future__ import annotations

import torch

from neuronscope.errors import InputError
from neuronscope.models.image_grid import (
    ImageLayout,
    LayoutRequest,
    Tile,
    full_box,
    image_token_id,
    runs,
    sub_box,
)


def _crop_grid(request: LayoutRequest, original: tuple[int, int] | None, n_crops: int) -> tuple[int, int] | None:
    """``(rows, cols)`` of the crop grid, or None where the original size is unknown."""
    if original is None:
        return None
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    size = request.processor_setting("size", {"height": 448, "width": 448})
    tile = (int(size["height"]), int(size["width"])) if isinstance(size, dict) else (int(size.height), int(size.width))
    low = int(request.processor_setting("min_patches", 1))
    high = int(request.processor_setting("max_patches", 12))
    width, height = original
    cols, rows = get_optimal_tiled_canvas((height, width), tile, low, high)
    if rows * cols != n_crops:
        raise InputError(f"the processor's tile grid for a {width}x{height} image is {cols}x{rows}, not {n_crops} "
                         "tiles: pass the original sizes of the images that made this batch")
    return rows, cols


def tiled_layout(request: LayoutRequest, side: int) -> ImageLayout:
    """Layout of one row of a tiles-plus-thumbnail batch whose tiles are ``side x side`` tokens."""
    config, row = request.config, request.row
    mask = request.image_mask(image_token_id(config))
    positions = mask[row].nonzero().flatten()
    per_tile = side * side
    ids = request.input_ids[row]
    spans = _image_spans(runs(positions), ids, per_tile, config.model_type)
    tiles, sizes = [], []
    for local, span in enumerate(spans):
        original = request.original_size(local)
        sizes.append(original)
        n_tiles = len(span)
        n_crops = n_tiles - 1 if n_tiles > 1 else 0
        grid = _crop_grid(request, original, n_crops) if n_crops else None
        whole = full_box(original)
        for index, cells in enumerate(span):
            if index < n_crops:
                place = divmod(index, grid[1]) if grid else (None, None)
                box = sub_box(whole, *place, *grid) if grid else None
                tiles.append(Tile(side, side, cells, local, "tile", box, place[0], place[1]))
            else:
                tiles.append(Tile(side, side, cells, local, "global" if n_crops else "image", whole))
    return ImageLayout(config.model_type, row, positions, tiles, image_sizes=sizes)


def _image_spans(spans: list[tuple[int, int]], ids: torch.Tensor, per_tile: int, family: str) -> list[list]:
    """Tiles (position tensors) grouped by image. InternVL writes one run per image; Aya one run per tile, each
    image ending with its global tile, whose marker (``TILE_GLOBAL``) precedes the row's last run too."""
    images: list[list] = []
    global_marker = int(ids[spans[-1][0] - 1]) if spans and spans[-1][0] > 0 else None
    open_image = False
    for start, stop in spans:
        if (stop - start) % per_tile:
            raise InputError(f"{family}: a run of {stop - start} image tokens is not whole tiles of {per_tile}; pass "
                             "the processor's output unchanged")
        tiles = [torch.arange(s, s + per_tile) for s in range(start, stop, per_tile)]
        if family != "aya_vision":
            images.append(tiles)
            continue
        if not open_image:
            images.append([])
        images[-1].extend(tiles)
        open_image = start == 0 or int(ids[start - 1]) != global_marker
    return images


def internvl_layout(request: LayoutRequest) -> ImageLayout:
    vision = request.config.vision_config
    patches = int(vision.image_size[0] if isinstance(vision.image_size, (list, tuple)) else vision.image_size)
    patch = int(vision.patch_size[0] if isinstance(vision.patch_size, (list, tuple)) else vision.patch_size)
    return tiled_layout(request, int(patches // patch * float(request.config.downsample_ratio)))


def aya_vision_layout(request: LayoutRequest) -> ImageLayout:
    vision = request.config.vision_config
    side = int(vision.image_size) // int(vision.patch_size) // int(request.config.downsample_factor)
    return tiled_layout(request, side)
