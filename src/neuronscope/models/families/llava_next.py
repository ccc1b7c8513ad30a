"""LLaVA-NeXT (``model_type="llava_next"``): any-resolution tiles, unpadding and newline tokens.

The layout reader of its image tokens: :mod:`neuronscope.models.layouts.llava_next`.
"""

from neuronscope.models.spec import VisionFamily

FAMILIES = (
    VisionFamily("llava_next", ("llava_next",), layout="neuronscope.models.layouts.llava_next:llava_next_layout",
                 notes="LLaVA-NeXT: any-res tiles plus newline tokens"),
)
