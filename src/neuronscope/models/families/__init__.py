"""One small spec per model family. Adding a family: a file here with a ``SPECS`` tuple, and one test."""

from __future__ import annotations

from neuronscope.models.families import gemma, gpt2, gpt_neox, llama, olmo2, phi3, vision
from neuronscope.models.spec import FamilySpec, VisionFamily

TEXT_SPECS: tuple[FamilySpec, ...] = (
    *llama.SPECS,
    *gemma.SPECS,
    *olmo2.SPECS,
    *phi3.SPECS,
    *gpt2.SPECS,
    *gpt_neox.SPECS,
)
VISION_FAMILIES: tuple[VisionFamily, ...] = vision.FAMILIES
