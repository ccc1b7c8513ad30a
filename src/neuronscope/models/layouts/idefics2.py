"""Idefics2 (``model_type="idefics2"``): a perceiver resampler, no spatial map.

Module tree (transformers 5): ``model.vision_model`` (SigLIP) -> ``model.connector`` (an MLP, then a perceiver
resampler whose ``resampler_n_latents`` learned latents cross-attend to all patches) -> ``text_model``. Each image
(and each of its crops when the processor splits it) gives ``resampler_n_latents`` tokens between
``<fake_token_around_image>`` markers; no token stands for a place in the image, so no heatmap can be drawn.
"""

from __future__ import annotations

from neuronscope.models.image_grid import ImageLayout, LayoutRequest, image_token_id

NO_MAP_REASON = (
    "idefics2 feeds the language model {n} learned perceiver latents per image (or crop); each latent attends to "
    "the whole image, so image-token positions have no spatial map and no heatmap over the image can be drawn. "
    "Use Idefics3 / SmolVLM (pixel-shuffled tiles) for patch heatmaps."
)


def idefics2_layout(request: LayoutRequest) -> ImageLayout:
    """Positions only, ``has_spatial_map=False`` (see the module docstring)."""
    config, row = request.config, request.row
    positions = request.image_mask(image_token_id(config))[row].nonzero().flatten()
    latents = int(getattr(config.perceiver_config, "resampler_n_latents", 64))
    return ImageLayout(config.model_type, row, positions, has_spatial_map=False,
                       reason=NO_MAP_REASON.format(n=latents))
