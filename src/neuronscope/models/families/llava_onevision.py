"""LLaVA-OneVision (``model_type="llava_onevision"``): any-resolution tiles, unpadded, then shrunk.

The layout reader of its image tokens: :mod:`neuronscope.models.layouts.llava_onevision`.
"""

from neuronscope.models.spec import VisionFamily

FAMILIES = (
    VisionFamily("llava_onevision", ("llava_onevision",), layout="neuronscope.models.layouts.llava_onevision:llava_onevision_layout",
                 notes="LLaVA-OneVision: any-res tiles, unpadded and shrunk to anyres_max_9, newline tokens"),
)
