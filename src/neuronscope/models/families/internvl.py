"""InternVL and Aya Vision (``model_type="internvl"`` / ``"aya_vision"``): tiles plus a thumbnail, each pixel-shuffled.

The layout reader of its image tokens: :mod:`neuronscope.models.layouts.internvl`.
"""

from neuronscope.models.spec import VisionFamily

FAMILIES = (
    VisionFamily("internvl", ("internvl",), layout="neuronscope.models.layouts.internvl:internvl_layout",
                 notes="InternVL: tiles plus a thumbnail, each pixel-shuffled to a square grid"),
    VisionFamily("aya_vision", ("aya_vision",), layout="neuronscope.models.layouts.internvl:aya_vision_layout", logits=(),
                 notes="Aya Vision: tiles plus a global tile, each pixel-shuffled to a square grid (its wrapper does "
                       "not apply Cohere's logit_scale)"),
)
