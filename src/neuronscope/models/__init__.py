"""Model loading and adapters: where the neurons, heads, final norm and unembedding are, per family.

Names are imported lazily: the family declarations (:mod:`.spec`, :mod:`.families`) load without the adapter.
"""

from __future__ import annotations

from neuronscope._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("FinalNorm", "ModelAdapter", "get_adapter", "supported_families"), "neuronscope.models.adapter"),
    **dict.fromkeys(("TEXT_SPECS", "VISION_FAMILIES"), "neuronscope.models.families"),
    **dict.fromkeys(("LoadedModel", "load_model", "parse_dtype"), "neuronscope.models.loading"),
    **dict.fromkeys(("SMOLLM2_GGUF", "smollm2_location"), "neuronscope.models.sources"),
    **dict.fromkeys(("FamilySpec", "VisionFamily"), "neuronscope.models.spec"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
