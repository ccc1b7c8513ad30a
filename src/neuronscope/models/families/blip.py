"""InstructBLIP and BLIP-2 (``model_type="instructblip"`` / ``"blip-2"``): learned queries, no spatial map.

The layout reader of its image tokens: :mod:`neuronscope.models.layouts.blip`.
"""

from neuronscope.models.spec import VisionFamily

FAMILIES = (
    VisionFamily("instructblip", ("instructblip", "blip-2", "blip_2"), layout="neuronscope.models.layouts.blip:blip_layout", spatial_map=False,
                 notes="InstructBLIP/BLIP-2: learned query tokens, no spatial map (no heatmaps)"),
)
