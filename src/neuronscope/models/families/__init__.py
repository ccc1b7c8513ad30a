"""One small file per model family: text specs (``SPECS``), vision-language wrappers (``FAMILIES``, each naming
the layout reader of its image tokens in :mod:`neuronscope.models.layouts`), the text-only wrappers
(``text_only.py``) and the refused model types (``refusals.py``). Pure data: importing it loads no torch. Adding a
family: a file here, its entry below, and its tiny config in ``tests/helpers/tiny_families.py`` (the accounting
test then checks it)."""

from __future__ import annotations

from neuronscope.models.families import (
    blip,
    bloom,
    gemma,
    gemma4,
    gpt2,
    gpt_neox,
    granite,
    hybrids,
    idefics2,
    idefics3,
    internvl,
    llama,
    llava,
    llava_next,
    llava_onevision,
    olmo,
    paligemma,
    parallel,
    phi3,
    pixtral,
    plain_ffn,
    qwen2_vl,
)
from neuronscope.models.families.refusals import REFUSALS
from neuronscope.models.families.text_only import TEXT_ONLY
from neuronscope.models.spec import FamilySpec, Refusal, VisionFamily

TEXT_SPECS: tuple[FamilySpec, ...] = (
    *llama.SPECS,
    *granite.SPECS,
    *gemma.SPECS,
    *olmo.SPECS,
    *phi3.SPECS,
    *plain_ffn.SPECS,
    *parallel.SPECS,
    *gpt_neox.SPECS,
    *gpt2.SPECS,
    *bloom.SPECS,
    *hybrids.SPECS,
)
VISION_FAMILIES: tuple[VisionFamily, ...] = (
    *llava.FAMILIES,
    *llava_next.FAMILIES,
    *llava_onevision.FAMILIES,
    *qwen2_vl.FAMILIES,
    *idefics3.FAMILIES,
    *idefics2.FAMILIES,
    *paligemma.FAMILIES,
    *gemma4.FAMILIES,
    *pixtral.FAMILIES,
    *internvl.FAMILIES,
    *blip.FAMILIES,
)
#: ``config.model_type`` -> its vision-language family (whose ``read_layout`` reads the image tokens' layout).
VISION_BY_TYPE = {model_type: family for family in VISION_FAMILIES for model_type in family.model_types}

__all__ = ["REFUSALS", "TEXT_ONLY", "TEXT_SPECS", "VISION_BY_TYPE", "VISION_FAMILIES", "FamilySpec", "Refusal",
           "VisionFamily"]
