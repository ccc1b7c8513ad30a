"""Model loading and adapters: where the neurons, heads, residual writes, final norm and unembedding are, per
family; the registry of families (``families/``) and its catalogue (``catalogue.py``).

Names are resolved lazily, so ``import neuronscope.models.catalogue`` does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "FinalNorm": "neuronscope.models.accounting",
    "ModelAdapter": "neuronscope.models.adapter",
    "get_adapter": "neuronscope.models.adapter",
    "supported_families": "neuronscope.models.adapter",
    "TEXT_SPECS": "neuronscope.models.families",
    "VISION_FAMILIES": "neuronscope.models.families",
    "REFUSALS": "neuronscope.models.families",
    "LoadedModel": "neuronscope.models.loading",
    "load_model": "neuronscope.models.loading",
    "parse_dtype": "neuronscope.models.loading",
    "SMOLLM2_GGUF": "neuronscope.models.sources",
    "smollm2_location": "neuronscope.models.sources",
    "FamilySpec": "neuronscope.models.spec",
    "VisionFamily": "neuronscope.models.spec",
    "Refusal": "neuronscope.models.spec",
    "CatalogueEntry": "neuronscope.models.catalogue",
    "catalogue": "neuronscope.models.catalogue",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'neuronscope.models' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
