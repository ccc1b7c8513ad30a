"""Aggregation of neuron scores: relative thresholds, top-k, sums and frequencies, QRNCA (inverse cluster attribution).

Pure tensor math: functions take score tensors ``[..., layers, d_ff]`` or neuron sets ``LongTensor [n, 2]``
of ``(layer, index)`` rows and return tensors or small dataclasses.
"""

from neuronscope.aggregate.qrnca import (
    QRNCAConfig,
    QRNCAResult,
    QueryCluster,
    qrnca_from_clusters,
    qrnca_na_only,
    qrnca_without_common_removal,
    query_cluster,
    run_qrnca,
)
from neuronscope.aggregate.select import (
    SparseTopK,
    check_neurons,
    flat_to_neurons,
    frequency_of_neuron_sets,
    frequency_over_examples,
    layer_histogram,
    mask_to_neurons,
    neurons_to_flat,
    neurons_to_mask,
    sparse_top_k,
    sum_over_examples,
    threshold_relative,
    threshold_relative_mask,
    top_k_neurons,
    top_k_per_layer,
)

__all__ = [
    "QRNCAConfig",
    "QRNCAResult",
    "QueryCluster",
    "SparseTopK",
    "check_neurons",
    "flat_to_neurons",
    "frequency_of_neuron_sets",
    "frequency_over_examples",
    "layer_histogram",
    "mask_to_neurons",
    "neurons_to_flat",
    "neurons_to_mask",
    "run_qrnca",
    "qrnca_from_clusters",
    "qrnca_na_only",
    "qrnca_without_common_removal",
    "query_cluster",
    "sparse_top_k",
    "sum_over_examples",
    "threshold_relative",
    "threshold_relative_mask",
    "top_k_neurons",
    "top_k_per_layer",
]
