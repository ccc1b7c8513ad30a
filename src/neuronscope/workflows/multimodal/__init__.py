"""Multimodal neurons (Pan et al. 2024): captions -> nouns -> contribution scores -> neurons per concept -> heatmaps.

| module | what |
| --- | --- |
| :mod:`.pipeline` | :func:`find_multimodal_neurons` and the ``recipe multimodal`` workflow |
| :mod:`.scoring` | captioning and scoring of one batch of images |
| :mod:`.moe_scoring` | the same on a mixture-of-experts VLM: expert neurons ``(layer, expert, index)`` |
| :mod:`.nouns` | the target words of a caption (nouns through a tagger, or a concept list) |
| :mod:`.results` | :class:`MultimodalNeurons` and its files |
| :mod:`.heatmaps` | heatmaps of a concept's neurons over its images |
"""

from __future__ import annotations

from neuronscope._lazy import lazy_exports

_EXPORTS = {
    "find_multimodal_neurons": "neuronscope.workflows.multimodal.pipeline",
    **dict.fromkeys(("MultimodalNeurons", "write_results"), "neuronscope.workflows.multimodal.results"),
    **dict.fromkeys(("caption_and_score", "pair_scores", "encode_captioning"), "neuronscope.workflows.multimodal.scoring"),
    **dict.fromkeys(("HeatmapResult", "neuron_heatmaps", "image_token_activations", "draw_concept_heatmaps"),
                    "neuronscope.workflows.multimodal.heatmaps"),
    **dict.fromkeys(("TaggedWord", "TaggerUnavailable", "TargetWord", "select_targets", "spacy_tagger"),
                    "neuronscope.workflows.multimodal.nouns"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
