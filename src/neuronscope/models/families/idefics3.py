"""Idefics3 and SmolVLM (``model_type="idefics3"`` / ``"smolvlm"``): pixel-shuffled crops plus the global image.

The layout reader of its image tokens: :mod:`neuronscope.models.layouts.idefics3`.
"""

from neuronscope.models.spec import VisionFamily

FAMILIES = (
    VisionFamily("idefics3", ("idefics3", "smolvlm"), layout="neuronscope.models.layouts.idefics3:idefics3_layout",
                 notes="Idefics3 / SmolVLM: pixel-shuffled tiles plus a global image"),
)
