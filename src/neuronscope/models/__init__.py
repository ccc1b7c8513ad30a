"""Model loading and adapters: where the neurons, heads, final norm and unembedding are, per family."""

from neuronscope.models.adapter import FinalNorm, ModelAdapter, get_adapter, supported_families
from neuronscope.models.families import TEXT_SPECS, VISION_FAMILIES
from neuronscope.models.loading import LoadedModel, load_model, parse_dtype
from neuronscope.models.sources import SMOLLM2_GGUF, smollm2_location
from neuronscope.models.spec import FamilySpec, VisionFamily

__all__ = [
    "FamilySpec", "FinalNorm", "LoadedModel", "ModelAdapter", "TEXT_SPECS", "VISION_FAMILIES", "VisionFamily",
    "SMOLLM2_GGUF", "get_adapter", "load_model", "parse_dtype", "smollm2_location", "supported_families",
]
