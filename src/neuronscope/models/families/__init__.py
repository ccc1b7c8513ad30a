"""One small file per model family: text specs (``SPECS``) and vision-language wrappers (``FAMILIES``, each naming
the layout reader of its image tokens in :mod:`neuronscope.models.layouts`). Pure data: importing it loads no torch. Adding a family: a file here, its entry below, and one test."""

from __future__ import annotations

from neuronscope.models.families import (
    blip,
    gemma,
    gpt2,
    gpt_neox,
    idefics3,
    llama,
    llava,
    llava_next,
    olmo2,
    phi3,
    qwen2_vl,
)
from neuronscope.models.spec import FamilySpec, VisionFamily

TEXT_SPECS: tuple[FamilySpec, ...] = (
    *llama.SPECS,
    *gemma.SPECS,
    *olmo2.SPECS,
    *phi3.SPECS,
    *gpt2.SPECS,
    *gpt_neox.SPECS,
)
VISION_FAMILIES: tuple[VisionFamily, ...] = (
    *llava.FAMILIES,
    *llava_next.FAMILIES,
    *qwen2_vl.FAMILIES,
    *idefics3.FAMILIES,
    *blip.FAMILIES,
)
#: ``config.model_type`` -> its vision-language family (whose ``read_layout`` reads the image tokens' layout).
VISION_BY_TYPE = {model_type: family for family in VISION_FAMILIES for model_type in family.model_types}
