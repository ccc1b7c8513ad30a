"""The papers' recipes end to end.

- :mod:`~neuronscope.pipelines.multimodal`: multimodal neurons of Pan et al. (2024): captions -> nouns ->
  contribution scores -> neurons per concept -> heatmaps (:func:`find_multimodal_neurons`).
- :mod:`~neuronscope.pipelines.nouns`: target words of a caption (nouns through a tagger, or a concept list).
- :mod:`~neuronscope.pipelines.invariance`: region / cross-image invariance and semantic sensitivity.
- :mod:`~neuronscope.pipelines.patches`: important image patches for an answer (Yu & Ananiadou 2024).
"""

from neuronscope.pipelines.invariance import (
    cross_image_invariance,
    region_invariance,
    semantic_sensitivity,
    set_overlap,
)
from neuronscope.pipelines.multimodal import (
    HeatmapResult,
    MultimodalNeurons,
    find_multimodal_neurons,
    load_results,
    neuron_heatmaps,
)
from neuronscope.pipelines.nouns import (
    TaggedWord,
    TaggerUnavailable,
    TargetWord,
    select_targets,
    spacy_tagger,
)
from neuronscope.pipelines.patches import (
    PatchResult,
    find_important_patches,
    important_patches,
    rank_correlation,
)

__all__ = [
    "HeatmapResult", "MultimodalNeurons", "PatchResult", "TaggedWord", "TaggerUnavailable", "TargetWord",
    "cross_image_invariance", "find_important_patches", "find_multimodal_neurons", "important_patches",
    "load_results", "neuron_heatmaps", "rank_correlation", "region_invariance", "select_targets", "semantic_sensitivity", "set_overlap",
    "spacy_tagger",
]
