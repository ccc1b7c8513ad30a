"""Mixture-of-experts models: what an MoE layer is per family, the neuron id space ``(layer, expert, index)``,
routing rules and the fused expert tensors read as neurons.

See :mod:`neuronscope.results.neuron_layout` for the neuron id space, :mod:`~neuronscope.models.moe.families` for
the families and :mod:`~neuronscope.models.moe.routing` for the routing rules. Names are imported lazily, so the
family declarations (``families.py``, ``family.py``) load without torch.
"""

from neuronscope._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("MOE_FAMILIES", "MOE_VISION_FAMILIES", "find_moe", "moe_family"),
                    "neuronscope.models.moe.families"),
    "MoEFamily": "neuronscope.models.moe.family",
    **dict.fromkeys(("RULES", "expert_scores", "route"), "neuronscope.models.moe.routing"),
    **dict.fromkeys(("ExpertLayer", "MoEStructure"), "neuronscope.models.moe.spec"),
    **dict.fromkeys(("expert_activations", "expert_bias", "expert_value_vectors", "expert_writes", "value_vector"),
                    "neuronscope.models.moe.weights"),
    **dict.fromkeys(("DENSE", "NeuronLayout"), "neuronscope.results.neuron_layout"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
