"""Measure what neurons do: metrics, random baselines, the one PCR, edit evaluation, captions, pruning, bias.

| module | what |
| --- | --- |
| :mod:`.metrics`, :mod:`.edit_metrics`, :mod:`.fluency` | pure metrics: PCR formula, summaries, concept rates, causal effect, specificity; edit success, locality, KL; n-gram fluency |
| :mod:`.baselines` | random neuron sets of the same layer distribution |
| :mod:`.probability` | the target-probability helper and the two scorers (full forwards, prefix cache) |
| :mod:`.pcr` | PCR of neuron sets vs random sets through any scorer |
| :mod:`.editing` | an edit's reliability, generalisation, locality, fluency vs random-neuron edits |
| :mod:`.captions` | captioning and a concept's removal from captions vs random neurons |
| :mod:`.pruning`, :mod:`.bias`, :mod:`.prediction` | CNA pruning, gender-bias edits, neuron-based prediction |

Names are imported lazily.
"""

from __future__ import annotations

from neuronscope._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("CausalEffect", "ConceptCaptions", "ConceptSpecificity", "Summary", "causal_effect",
                     "compile_concept_pattern", "concept_rate", "mentions_concept", "probability_change_ratio",
                     "specificity", "summarise"), "neuronscope.measure.metrics"),
    **dict.fromkeys(("edit_success", "generalisation", "kl_divergence", "locality_kl", "reliability",
                     "token_agreement"), "neuronscope.measure.edit_metrics"),
    **dict.fromkeys(("fluency", "n_gram_entropy", "simple_word_tokenize"), "neuronscope.measure.fluency"),
    **dict.fromkeys(("random_neurons_like", "summarise_draws"), "neuronscope.measure.baselines"),
    **dict.fromkeys(("ForwardScorer", "PrefixCacheScorer", "Scorer", "last_logits", "target_probability"),
                    "neuronscope.measure.probability"),
    **dict.fromkeys(("NeuronGroup", "PCRReport", "pcr_against_random"), "neuronscope.measure.pcr"),
    **dict.fromkeys(("SpecificityReport", "neuron_specificity", "edit_specificity"), "neuronscope.measure.specificity"),
    **dict.fromkeys(("EditEvaluation", "EditScores", "evaluate_edit", "random_edits"), "neuronscope.measure.editing"),
    **dict.fromkeys(("caption_images", "concept_removal", "removal_records"), "neuronscope.measure.captions"),
    **dict.fromkeys(("PruningReport", "prune_experiment"), "neuronscope.measure.pruning"),
    **dict.fromkeys(("BiasReport", "bias_experiment", "bias_neurons"), "neuronscope.measure.bias"),
    **dict.fromkeys(("PredictionReport", "domain_scores", "domain_specific_neurons", "evaluate_predictions",
                     "neuron_based_prediction", "predict_domains"), "neuronscope.measure.prediction"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
