"""Evaluation: metrics (PCR, concept rates, editing metrics, fluency), random baselines, neuron-based prediction.

Pure functions over tensors, token ids and strings; the model runs that produce their inputs live in
pipelines and the CLI.
"""

from neuronscope.evaluate.baselines import random_neurons_like, summarise_draws
from neuronscope.evaluate.metrics import (
    CausalEffect,
    ConceptCaptions,
    SpecificityReport,
    Summary,
    causal_effect,
    compile_concept_pattern,
    concept_rate,
    edit_success,
    fluency,
    generalisation,
    kl_divergence,
    locality_kl,
    mentions_concept,
    n_gram_entropy,
    prefers_target,
    probability_change_ratio,
    reliability,
    sequence_nll,
    simple_word_tokenize,
    specificity,
    summarise,
    token_accuracy,
    token_agreement,
)
from neuronscope.evaluate.prediction import (
    PredictionReport,
    domain_scores,
    domain_specific_neurons,
    evaluate_predictions,
    neuron_based_prediction,
    predict_domains,
)

__all__ = [
    "CausalEffect",
    "ConceptCaptions",
    "PredictionReport",
    "SpecificityReport",
    "Summary",
    "causal_effect",
    "compile_concept_pattern",
    "concept_rate",
    "domain_scores",
    "domain_specific_neurons",
    "edit_success",
    "evaluate_predictions",
    "fluency",
    "generalisation",
    "kl_divergence",
    "locality_kl",
    "mentions_concept",
    "n_gram_entropy",
    "neuron_based_prediction",
    "predict_domains",
    "prefers_target",
    "probability_change_ratio",
    "random_neurons_like",
    "reliability",
    "sequence_nll",
    "simple_word_tokenize",
    "specificity",
    "summarise",
    "summarise_draws",
    "token_accuracy",
    "token_agreement",
]
