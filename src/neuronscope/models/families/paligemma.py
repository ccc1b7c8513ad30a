"""PaliGemma, Gemma-3 and Janus (``model_type="paligemma"`` / ``"gemma3"`` / ``"janus"``): one square grid per image.

The layout reader of its image tokens: :mod:`neuronscope.models.layouts.paligemma`.
"""

from neuronscope.models.spec import VisionFamily

FAMILIES = (
    VisionFamily("paligemma", ("paligemma",), layout="neuronscope.models.layouts.paligemma:paligemma_layout",
                 notes="PaliGemma: one square SigLIP grid per image"),
    VisionFamily("gemma3", ("gemma3",), layout="neuronscope.models.layouts.paligemma:gemma3_layout",
                 notes="Gemma-3: SigLIP patches pooled to a square grid (mm_tokens_per_image)"),
    VisionFamily("janus", ("janus",), layout="neuronscope.models.layouts.paligemma:janus_layout",
                 notes="Janus: one square SigLIP grid per image, padded to a square"),
)
