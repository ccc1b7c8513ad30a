"""LLaVA-1.5 (``model_type="llava"``): one square grid per image.

Module tree (transformers 5): ``LlavaForConditionalGeneration.model`` holds ``vision_tower`` (CLIP),
``multi_modal_projector`` and ``language_model``. The processor repeats ``<image>`` once per patch of the
``image_size / patch_size`` grid (24x24 at 336 px, 16x16 at 224 px); with
``vision_feature_select_strategy="default"`` the CLS feature is dropped, with ``"full"`` it is kept and comes
first (an image token that belongs to no cell).

Boxes follow the image processor: optional pad-to-square (``do_pad``, centered), resize (``size``:
``shortest_edge`` or ``height``/``width``), optional center crop (``crop_size``). Without an image processor
the llava-hf default is assumed: shortest edge to the tower size, then a center crop to a square.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from neuronscope.errors import InputError
from neuronscope.models.image_grid import Box, ImageLayout, LayoutRequest, Tile, image_token_id, images_of_row


def _size_field(size: Any, key: str) -> int | None:
    if size is None:
        return None
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value is not None else None


def _resized(width: int, height: int, size: Any) -> tuple[int, int]:
    """(width, height) after the image processor's resize (``default_to_square=False`` rules)."""
    target_h, target_w = _size_field(size, "height"), _size_field(size, "width")
    if target_h and target_w:
        return target_w, target_h
    shortest = _size_field(size, "shortest_edge")
    if not shortest:
        return width, height
    short, long = min(width, height), max(width, height)
    new_short, new_long = shortest, int(shortest * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _crop_start(resized: int, crop: int) -> int:
    return (resized - crop) // 2 if crop <= resized else -math.ceil((crop - resized) / 2)


def processed_box(
    original: tuple[int, int],
    *,
    do_pad: bool,
    do_resize: bool,
    size: Any,
    do_center_crop: bool,
    crop: tuple[int, int],
) -> Box:
    """Region of the original image that the processed square (``crop`` = (width, height)) shows.

    Example: a 400x300 image, resize shortest edge to 336 and center crop 336 -> ``(50.0, 0.0, 350.0, 300.0)``.
    """
    width, height = original
    left0 = top0 = 0.0
    canvas_w, canvas_h = width, height
    if do_pad and width != height:
        side = max(width, height)
        left0, top0 = -float((side - width) // 2), -float((side - height) // 2)
        canvas_w = canvas_h = side
    resized_w, resized_h = _resized(canvas_w, canvas_h, size) if do_resize else (canvas_w, canvas_h)
    if do_center_crop:
        crop_w, crop_h = crop
        left, top = _crop_start(resized_w, crop_w), _crop_start(resized_h, crop_h)
    else:
        crop_w, crop_h, left, top = resized_w, resized_h, 0, 0
    scale_x, scale_y = canvas_w / resized_w, canvas_h / resized_h
    return (
        left0 + left * scale_x,
        top0 + top * scale_y,
        left0 + (left + crop_w) * scale_x,
        top0 + (top + crop_h) * scale_y,
    )


def _has_cls(vision_config: Any) -> bool:
    # CLIP-like towers prepend a CLS embedding; SigLIP and friends do not.
    return "clip" in str(getattr(vision_config, "model_type", "clip"))


def llava_layout(request: LayoutRequest) -> ImageLayout:
    """Layout of one row of a LLaVA-1.5 batch (see the module docstring)."""
    config, row = request.config, request.row
    vision = config.vision_config
    if getattr(vision, "model_type", "") == "pixtral":  # Pixtral-12B: rows separated by [IMG_BREAK], no merger
        from neuronscope.models.layouts.pixtral import pixtral_layout

        return pixtral_layout(request, merge=1)
    mask = request.image_mask(image_token_id(config))
    pixel_values = request.tensor("pixel_values")
    if pixel_values is not None:
        height, width = (int(x) for x in pixel_values.shape[-2:])
    else:
        height = width = int(vision.image_size)
    patch = int(vision.patch_size)
    rows, cols = height // patch, width // patch
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    has_cls = _has_cls(vision)
    if strategy == "default" and not has_cls:
        raise InputError(
            "this llava config drops the first vision token (strategy 'default') but its tower has no CLS, so "
            "one patch is missing and the grid is ragged; set vision_feature_select_strategy='full'"
        )
    n_extra = 1 if (strategy == "full" and has_cls) else 0
    per_image = rows * cols + n_extra
    n_images_batch = int(pixel_values.shape[0]) if pixel_values is not None else int(mask.sum()) // per_image
    images = images_of_row([per_image] * n_images_batch, mask, row)

    positions = mask[row].nonzero().flatten()
    do_pad = bool(request.processor_setting("do_pad", False))
    do_resize = bool(request.processor_setting("do_resize", True))
    size = request.processor_setting("size", {"shortest_edge": int(vision.image_size)})
    do_crop = bool(request.processor_setting("do_center_crop", True))
    tiles, extras, sizes = [], [], []
    for local, _ in enumerate(images):
        block = positions[local * per_image : (local + 1) * per_image]
        extras.append(block[:n_extra])
        original = request.original_size(local)
        sizes.append(original)
        box = None
        if original is not None:
            box = processed_box(
                original,
                do_pad=do_pad,
                do_resize=do_resize,
                size=size,
                do_center_crop=do_crop,
                crop=(width, height),
            )
        tiles.append(Tile(rows, cols, block[n_extra:].clone(), image_index=local, kind="image", box=box))
    return ImageLayout(
        family=config.model_type,
        row=row,
        positions=positions,
        tiles=tiles,
        extra_positions=torch.cat(extras) if extras else torch.empty(0, dtype=torch.long),
        image_sizes=sizes,
    )
