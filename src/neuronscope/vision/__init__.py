"""Image tokens of vision-language models: where they are, which grid cell each is, heatmaps over the image.

- :func:`image_layout` -> :class:`ImageLayout` (positions, :class:`Tile` grids, newline / extra tokens).
- :mod:`neuronscope.vision.heatmap`: values on the grid, upsampled overlays, percentile masks, PNGs.
- :mod:`neuronscope.vision.shuffle`: seeded shuffles of image-token features (region-invariance tests).
"""

from neuronscope.vision.grid import Box, ImageLayout, Tile
from neuronscope.vision.layout import SUPPORTED_FAMILIES, image_layout

__all__ = ["Box", "ImageLayout", "SUPPORTED_FAMILIES", "Tile", "image_layout"]
