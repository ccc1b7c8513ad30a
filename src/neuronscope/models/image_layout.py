"""``image_layout``: find the image tokens of a batch row and the vision grid(s) they form.

The family is resolved from ``config.model_type`` (the readers are declared beside each family in
:mod:`neuronscope.models.families`); everything else is
read from the config and from the processor's output, so it follows whatever sizes the checkpoint uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from neuronscope.errors import InputError, UnsupportedModelError
from neuronscope.models.families import VISION_BY_TYPE
from neuronscope.models.image_grid import ImageLayout, LayoutRequest, image_token_id
from neuronscope.models.moe.families import MOE_VISION_FAMILIES

#: every vision-language model type with a layout reader (dense and mixture-of-experts language models)
_READERS = {**VISION_BY_TYPE, **{t: family for family in MOE_VISION_FAMILIES for t in family.model_types}}
SUPPORTED_FAMILIES: tuple[str, ...] = tuple(_READERS)


def _config_of(model_or_config: Any) -> Any:
    config = getattr(model_or_config, "config", model_or_config)
    if not hasattr(config, "model_type"):
        raise InputError(f"expected a Hugging Face model or config, got {type(model_or_config).__name__}")
    return config


def image_layout(
    model_or_config: Any,
    batch: Mapping[str, Any],
    row: int = 0,
    *,
    processor: Any = None,
    original_sizes: Sequence[tuple[int, int]] | None = None,
) -> ImageLayout:
    """Where the image tokens of ``batch`` row ``row`` are and which vision-grid cell each one is.

    Args:
        model_or_config: the VLM (or its config); the family comes from ``config.model_type``.
        batch: what the model's own processor returned (``input_ids``, ``attention_mask``, ``pixel_values`` and
            the family's extras: ``image_sizes``, ``image_grid_thw``, ``pixel_attention_mask`` ...). Left
            padding is fine: positions are indices into the padded row.
        row: the batch row to describe (default 0).
        processor: optional; the processor (or image processor) that made the batch. Used for its crop / pad
            settings (boxes on the original image) and, for Idefics3, its tokenizer.
        original_sizes: optional ``(width, height)`` of each image of the row, for families whose batch does
            not carry it (all but LLaVA-NeXT); without it tiles have ``box=None``.

    Returns:
        An :class:`ImageLayout`: ``positions [n_image_tokens]``, ``tiles`` (grid shape, cell positions
        row-major, box on the original image), newline / extra positions, ``has_spatial_map`` + ``reason``.

    Raises:
        UnsupportedModelError: a text-only model, or a VLM family without a layout reader.
        InputError: the row holds no image tokens, or the batch does not match the model.

    Example::

        batch = processor(text=["USER: <image>\\nWhat is this? ASSISTANT:"], images=[image], return_tensors="pt")
        layout = image_layout(model, batch, original_sizes=[image.size])
        layout.tiles[0].rows, layout.tiles[0].cols  # (24, 24) for LLaVA-1.5 at 336 px
    """
    config = _config_of(model_or_config)
    family = str(config.model_type)
    vision_family = _READERS.get(family)
    if vision_family is None:
        if getattr(config, "vision_config", None) is None:
            raise UnsupportedModelError(
                f"model type {family!r} is a text-only model: it has no image tokens to lay out; use a "
                f"vision-language model of a supported family ({', '.join(SUPPORTED_FAMILIES)})"
            )
        raise UnsupportedModelError(
            f"vision-language model type {family!r} has no image-layout reader; supported: "
            f"{', '.join(SUPPORTED_FAMILIES)}. Declare one beside the family in neuronscope/models/families/ (its reader in models/layouts/)"
        )
    request = LayoutRequest(config, batch, row, processor, original_sizes)
    if not bool(request.image_mask(image_token_id(config))[row].any()):
        raise InputError(
            f"row {row} of the batch has no image tokens (id {image_token_id(config)}); put the image "
            "placeholder in the prompt and pass the image to the processor, or choose a row that has an image"
        )
    return vision_family.read_layout(request)
