"""Idefics3 and SmolVLM (``model_type="idefics3"`` / ``"smolvlm"``): pixel-shuffled crops plus the global image.

Module tree (transformers 5): ``Idefics3ForConditionalGeneration.model`` holds ``vision_model`` (SigLIP),
``connector`` (pixel shuffle by ``scale_factor``, then a linear map) and ``text_model``. Each crop of
``image_size`` px gives ``(image_size / patch_size / scale_factor)**2`` tokens, row-major over the shuffled
grid (each cell = a ``scale_factor x scale_factor`` block of patches).

The processor resizes the image to its longest edge, stretches it to whole multiples of the crop size, cuts it
into ``R x C`` crops and appends the whole image squashed to one crop ("global"). Text per image::

    <fake><row_1_col_1><image>*N <fake><row_1_col_2><image>*N ... "\\n"   (one line per crop row)
    "\\n" <fake><global-img><image>*N <fake>

Unsplit images have the global part only. Crops and their ``(row, col)`` are read from the marker token in
front of each run of image tokens: decoded with the processor's tokenizer when given, otherwise from the
token layout (the run whose marker matches the row's last run is the global image; two tokens between runs
mean the same crop row, more mean a new crop row). Both need ``<global-img>`` and ``<row_i_col_j>`` to be
single tokens, as in the released tokenizers. SmolVLM's processor writes the same text and its connector
shuffles the same way (``SmolVLMForConditionalGeneration.model.connector``).
"""

from __future__ import annotations

import re

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

_MARKER = re.compile(r"<row_(\d+)_col_(\d+)>")
_GLOBAL = "<global-img>"


def _crop_places_from_tokens(markers: list[int], tokenizer: object) -> list[tuple[int, int] | None]:
    """``(row, col)`` (0-based) of each run from its decoded marker; ``None`` for a global image."""
    places: list[tuple[int, int] | None] = []
    for marker in markers:
        text = tokenizer.convert_ids_to_tokens(marker)  # type: ignore[attr-defined]
        if text == _GLOBAL:
            places.append(None)
            continue
        match = _MARKER.fullmatch(str(text))
        if match is None:
            raise InputError(
                f"Idefics3 image tokens follow {text!r}, expected <row_i_col_j> or {_GLOBAL}; the batch was not "
                "made by this model's processor"
            )
        places.append((int(match.group(1)) - 1, int(match.group(2)) - 1))
    return places


def _crop_places_from_layout(
    spans: list[tuple[int, int]], markers: list[int]
) -> list[tuple[int, int] | None]:
    """Same as :func:`_crop_places_from_tokens`, from the gaps between runs (no tokenizer needed)."""
    global_marker = markers[-1]
    places: list[tuple[int, int] | None] = []
    crop_row = crop_col = 0
    previous_end: int | None = None
    for (start, end), marker in zip(spans, markers, strict=True):
        if marker == global_marker:
            places.append(None)
            previous_end = None
            continue
        if previous_end is not None and start - previous_end == 2:
            crop_col += 1
        elif previous_end is not None:
            crop_row, crop_col = crop_row + 1, 0
        else:
            crop_row = crop_col = 0
        places.append((crop_row, crop_col))
        previous_end = end
    return places


def idefics3_layout(request: LayoutRequest) -> ImageLayout:
    """Layout of one row of an Idefics3 batch (see the module docstring)."""
    config, row = request.config, request.row
    vision = config.vision_config
    scale = int(getattr(config, "scale_factor", 2))
    side = int(vision.image_size) // int(vision.patch_size) // scale
    ids = request.input_ids
    mask = request.image_mask(image_token_id(config))
    positions = mask[row].nonzero().flatten()
    spans = runs(positions)
    wrong = [stop - start for start, stop in spans if stop - start != side * side]
    if wrong or (spans and spans[0][0] == 0):
        raise InputError(
            f"Idefics3 expects runs of {side * side} image tokens, each after a marker token; row {row} has runs of "
            f"{[stop - start for start, stop in spans]}: pass the processor's output unchanged"
        )
    markers = [int(ids[row, start - 1]) for start, _ in spans]
    tokenizer = request.tokenizer
    if tokenizer is not None and hasattr(tokenizer, "convert_ids_to_tokens"):
        places = _crop_places_from_tokens(markers, tokenizer)
    else:
        places = _crop_places_from_layout(spans, markers)
    if places and places[-1] is not None:
        raise InputError(f"row {row} does not end with a global image; pass the processor's output unchanged")

    tiles: list[Tile] = []
    sizes: list[tuple[int, int] | None] = []
    pending: list[tuple[tuple[int, int], torch.Tensor]] = []
    for (start, stop), place in zip(spans, places, strict=True):
        cells = torch.arange(start, stop, dtype=torch.long)
        if place is not None:
            pending.append((place, cells))
            continue
        image_index = len(sizes)
        original = request.original_size(image_index)
        sizes.append(original)
        whole = full_box(original)
        n_rows = max((r for (r, _), _ in pending), default=-1) + 1
        n_cols = max((c for (_, c), _ in pending), default=-1) + 1
        if len(pending) != n_rows * n_cols:
            raise InputError(f"image {image_index} of row {row} has {len(pending)} crops, not a full grid")
        for (crop_row, crop_col), crop_cells in pending:
            box = sub_box(whole, crop_row, crop_col, n_rows, n_cols)
            tiles.append(Tile(side, side, crop_cells, image_index, "tile", box, crop_row, crop_col))
        tiles.append(Tile(side, side, cells, image_index, "global", whole))
        pending = []
    return ImageLayout(config.model_type, row, positions, tiles, image_sizes=sizes)
