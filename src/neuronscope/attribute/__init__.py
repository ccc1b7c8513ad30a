"""Attribution methods, one module each, registered once in :mod:`.registry` (names = the CLI's ``--method``).

Registered methods (``neuronscope models`` lists them): ``contribution`` (Pan et al.), ``integrated_gradients``
(Dai et al.; NA of NA-ICA/QRNCA), ``gradient_x_activation`` (baseline), ``log_probability_increase`` (Yu &
Ananiadou; heads and attention neurons too) and ``comparative`` (CNA). Their targets live in
:mod:`neuronscope.inputs.targets`. Names are imported lazily.
"""

from __future__ import annotations

from neuronscope._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("ComparativeScores", "comparative", "query_neuron_scores"), "neuronscope.attribute.comparative"),
    "contribution": "neuronscope.attribute.contribution",
    "gradient_x_activation": "neuronscope.attribute.gradient_x_activation",
    "integrated_gradients": "neuronscope.attribute.integrated_gradients",
    **dict.fromkeys(("head_log_probability_increase", "head_source_log_probability_increase",
                     "log_probability_increase"), "neuronscope.attribute.log_probability_increase"),
    "HeadSourceScores": "neuronscope.attribute.heads",
    **dict.fromkeys(("QueryNeurons", "split_query_neurons", "summed_query_neuron_scores"),
                    "neuronscope.attribute.query_neurons"),
    **dict.fromkeys(("METHODS", "MethodInfo", "get_method", "list_methods"), "neuronscope.attribute.registry"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
