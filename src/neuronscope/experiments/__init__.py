"""Experiments that run a model under interventions or edits and measure the effect against random baselines."""

from neuronscope.experiments.bias import bias_experiment
from neuronscope.experiments.editing import evaluate_edit
from neuronscope.experiments.pcr import NeuronGroup, PCRReport, pcr_experiment, target_probabilities
from neuronscope.experiments.pruning import prune_experiment

__all__ = [
    "NeuronGroup", "PCRReport", "bias_experiment", "evaluate_edit", "pcr_experiment", "prune_experiment",
    "target_probabilities",
]
