"""Experiments that run a model under interventions and measure the effect against random baselines."""

from neuronscope.experiments.pcr import NeuronGroup, PCRReport, pcr_experiment, target_probabilities

__all__ = ["NeuronGroup", "PCRReport", "pcr_experiment", "target_probabilities"]
