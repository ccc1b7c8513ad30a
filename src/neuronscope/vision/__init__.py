"""Pictures over the image: per-image-token values on the vision grid, heatmaps, masks, and image-token shuffles.

Where the image tokens are and which grid cell each is (:func:`~neuronscope.models.image_layout.image_layout`)
is a family fact and lives in :mod:`neuronscope.models`; this folder draws on it.

- :mod:`neuronscope.vision.heatmap`: values on the grid, upsampled overlays, percentile masks, PNGs.
- :mod:`neuronscope.vision.shuffle`: seeded shuffles of image-token features (region-invariance tests).

Example::

    batch = processor(text=[prompt], images=[image], return_tensors="pt")
    layout = image_layout(model, batch, processor=processor, original_sizes=[image.size])  # neuronscope.models
    values = acts[0, layout.positions, neuron]          # acts: [batch, seq, d_ff] at one layer
    heat = image_heatmap(values, layout)                 # [H, W] on the original image, NaN where unseen
    write_png("neuron.png", overlay(image, heat))
    write_png("neuron_mask.png", mask_overlay(image, mask_above_percentile(heat, 95)))
"""

from neuronscope.vision.heatmap import (
    TOP_KS,
    grid_on_image,
    image_heatmap,
    mask_above_percentile,
    mask_overlay,
    neuron_heatmap,
    overlay,
    top_neurons_mean,
    values_on_grid,
)
from neuronscope.vision.shuffle import shuffle_image_embeddings, shuffle_plan, shuffled_image_tokens

__all__ = [
    "TOP_KS",
    "grid_on_image",
    "image_heatmap",
    "mask_above_percentile",
    "mask_overlay",
    "neuron_heatmap",
    "overlay",
    "shuffle_image_embeddings",
    "shuffle_plan",
    "shuffled_image_tokens",
    "top_neurons_mean",
    "values_on_grid",
]
