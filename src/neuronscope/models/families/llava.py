"""LLaVA-1.5 (``model_type="llava"``): one square grid per image.

The layout reader of its image tokens: :mod:`neuronscope.models.layouts.llava`.
"""

from neuronscope.models.spec import VisionFamily

FAMILIES = (
    VisionFamily("llava", ("llava",), layout="neuronscope.models.layouts.llava:llava_layout",
                 notes="LLaVA-1.5: one square vision grid (24x24 at 336 px)"),
)
