"""Evaluation: metrics (PCR, concept rates, editing metrics, fluency), random baselines, neuron-based prediction."""
