"""Aggregation of neuron scores: relative thresholds, top-k, sums and frequencies, QRNCA (inverse cluster attribution).

Pure tensor math: functions take score tensors ``[..., layers, d_ff]`` or neuron sets ``LongTensor [n, 2]``
of ``(layer, index)`` rows and return tensors or small dataclasses. Names are imported lazily.
"""

from __future__ import annotations

from neuronscope._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("QRNCAConfig", "QRNCAResult", "QueryCluster", "qrnca_from_clusters", "qrnca_na_only",
                     "qrnca_without_common_removal", "query_cluster", "run_qrnca"), "neuronscope.aggregate.qrnca"),
    **dict.fromkeys(("check_neurons", "flat_to_neurons", "mask_to_neurons", "neurons_to_flat", "neurons_to_mask"),
                    "neuronscope.aggregate.neurons"),
    **dict.fromkeys(("SparseTopK", "frequency_of_neuron_sets", "frequency_over_examples", "layer_histogram",
                     "select_neurons", "sparse_top_k", "sum_over_examples", "threshold_relative",
                     "threshold_relative_mask", "top_k_neurons", "top_k_per_layer"), "neuronscope.aggregate.select"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
