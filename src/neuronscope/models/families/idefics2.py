"""Idefics2 (``model_type="idefics2"``): a perceiver resampler, no spatial map.

The layout reader of its image tokens: :mod:`neuronscope.models.layouts.idefics2`.
"""

from neuronscope.models.spec import VisionFamily

FAMILIES = (
    VisionFamily("idefics2", ("idefics2",), layout="neuronscope.models.layouts.idefics2:idefics2_layout", spatial_map=False,
                 notes="Idefics2: perceiver latents, no spatial map (no heatmaps)"),
)
