"""Model loading and adapters: where the neurons, heads, residual writes, final norm and unembedding are, per
family; the registry of families (``families/``) and its catalogue (``catalogue.py``).

Names are imported lazily: the family declarations (:mod:`.spec`, :mod:`.families`) and the catalogue load
without the adapter, so ``import neuronscope.models.catalogue`` does not import torch.
"""

from __future__ import annotations

from neuronscope._lazy import lazy_exports

_EXPORTS = {
    "FinalNorm": "neuronscope.models.accounting",
    **dict.fromkeys(("ModelAdapter", "get_adapter", "supported_families"), "neuronscope.models.adapter"),
    **dict.fromkeys(("REFUSALS", "TEXT_SPECS", "VISION_FAMILIES"), "neuronscope.models.families"),
    **dict.fromkeys(("LoadedModel", "load_model", "parse_dtype"), "neuronscope.models.loading"),
    **dict.fromkeys(("SMOLLM2_GGUF", "smollm2_location"), "neuronscope.models.sources"),
    **dict.fromkeys(("FamilySpec", "Refusal", "VisionFamily"), "neuronscope.models.spec"),
    **dict.fromkeys(("CatalogueEntry", "catalogue", "format_catalogue"), "neuronscope.models.catalogue"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
