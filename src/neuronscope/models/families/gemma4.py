"""Gemma-4 (``model_type="gemma4"``): an aspect-preserving grid of pooled patches per image.

The layout reader of its image tokens: :mod:`neuronscope.models.layouts.gemma4`.
"""

from neuronscope.models.spec import VisionFamily

FAMILIES = (
    VisionFamily("gemma4", ("gemma4",), layout="neuronscope.models.layouts.gemma4:gemma4_layout",
                 notes="Gemma-4: aspect-preserving grid of k x k pooled patches (image_position_ids)"),
)
