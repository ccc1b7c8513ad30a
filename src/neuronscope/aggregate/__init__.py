"""Aggregation of neuron scores: thresholds, top-k, sums and frequencies, QRNCA (inverse cluster attribution)."""
