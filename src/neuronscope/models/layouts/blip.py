"""InstructBLIP and BLIP-2 (``model_type="instructblip"`` / ``"blip-2"``): learned queries, no spatial map.

Module tree (transformers 5): ``vision_model`` -> ``qformer`` (a fixed number of learned query tokens
cross-attend to all patches) -> ``language_projection`` -> ``language_model``. The language model sees
``num_query_tokens`` image tokens, none of which stands for a place in the image, so no heatmap over the
image can be drawn from them.
"""

from __future__ import annotations

from neuronscope.models.image_grid import ImageLayout, LayoutRequest, image_token_id

NO_MAP_REASON = (
    "{family} feeds the language model {n} learned Q-Former query tokens per image; each query attends to the "
    "whole image, so image-token positions have no spatial map and no heatmap over the image can be drawn. "
    "Use a grid family (llava, llava_next, qwen2_vl, qwen2_5_vl, idefics3) for patch heatmaps, or look at "
    "the Q-Former's cross-attention instead."
)


def blip_layout(request: LayoutRequest) -> ImageLayout:
    """Layout of one row of an InstructBLIP / BLIP-2 batch: positions only, ``has_spatial_map=False``."""
    config, row = request.config, request.row
    mask = request.image_mask(image_token_id(config))
    positions = mask[row].nonzero().flatten()
    n_query = int(getattr(config, "num_query_tokens", 0)) or int(positions.numel())
    n_images = int(positions.numel()) // max(n_query, 1)
    return ImageLayout(
        family=config.model_type,
        row=row,
        positions=positions,
        has_spatial_map=False,
        reason=NO_MAP_REASON.format(family=config.model_type, n=n_query),
        image_sizes=[request.original_size(i) for i in range(n_images)],
    )
