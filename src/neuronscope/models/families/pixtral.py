"""Pixtral-tower models: Mistral-3 (``model_type="mistral3"``) and LLaVA with a Pixtral vision tower.

The layout reader of its image tokens: :mod:`neuronscope.models.layouts.pixtral`.
"""

from neuronscope.models.spec import VisionFamily

FAMILIES = (
    VisionFamily("mistral3", ("mistral3",), layout="neuronscope.models.layouts.pixtral:mistral3_layout",
                 notes="Mistral-3: Pixtral grid (merged 2x2) with [IMG_BREAK] after each row"),
)
