"""Image tokens of vision-language models: where they are, which grid cell each is, heatmaps over the image.

- :func:`image_layout` -> :class:`ImageLayout` (positions, :class:`Tile` grids, newline / extra tokens).
- :mod:`neuronscope.vision.heatmap`: values on the grid, upsampled overlays, percentile masks, PNGs.
- :mod:`neuronscope.vision.shuffle`: seeded shuffles of image-token features (region-invariance tests).

Example::

    batch = processor(text=[prompt], images=[image], return_tensors="pt")
    layout = image_layout(model, batch, processor=processor, original_sizes=[image.size])
    values = acts[0, layout.positions, neuron]          # acts: [batch, seq, d_ff] at one layer
    heat = image_heatmap(values, layout)                 # [H, W] on the original image, NaN where unseen
    save_png(overlay(image, heat), "neuron.png")
    save_png(mask_overlay(image, mask_above_percentile(heat, 95)), "neuron_mask.png")
"""

from neuronscope.vision.grid import Box, ImageLayout, Tile
from neuronscope.vision.heatmap import (
    TOP_KS,
    grid_on_image,
    image_heatmap,
    mask_above_percentile,
    mask_overlay,
    neuron_heatmap,
    overlay,
    save_png,
    top_neurons_mean,
    values_on_grid,
)
from neuronscope.vision.layout import SUPPORTED_FAMILIES, image_layout
from neuronscope.vision.shuffle import shuffle_image_embeddings, shuffle_plan, shuffled_image_tokens

__all__ = [
    "Box",
    "ImageLayout",
    "SUPPORTED_FAMILIES",
    "TOP_KS",
    "Tile",
    "grid_on_image",
    "image_heatmap",
    "image_layout",
    "mask_above_percentile",
    "mask_overlay",
    "neuron_heatmap",
    "overlay",
    "save_png",
    "shuffle_image_embeddings",
    "shuffle_plan",
    "shuffled_image_tokens",
    "top_neurons_mean",
    "values_on_grid",
]
