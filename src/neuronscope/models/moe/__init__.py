"""Mixture-of-experts models: what an MoE layer is per family, the neuron id space ``(layer, expert, index)``,
routing rules and the fused expert tensors read as neurons.

See :mod:`neuronscope.results.neuron_layout` for the neuron id space, :mod:`~neuronscope.models.moe.families` for
the families and :mod:`~neuronscope.models.moe.routing` for the routing rules.
"""

from neuronscope.models.moe.families import MOE_FAMILIES, MOE_VISION_FAMILIES, find_moe, moe_family
from neuronscope.models.moe.routing import RULES, expert_scores, route
from neuronscope.models.moe.spec import ExpertLayer, MoEFamily, MoEStructure
from neuronscope.models.moe.weights import (
    expert_activations,
    expert_bias,
    expert_value_vectors,
    expert_writes,
    value_vector,
)
from neuronscope.results.neuron_layout import DENSE, NeuronLayout

__all__ = [
    "DENSE", "MOE_FAMILIES", "MOE_VISION_FAMILIES", "RULES", "ExpertLayer", "MoEFamily", "MoEStructure",
    "NeuronLayout", "expert_activations", "expert_bias", "expert_scores", "expert_value_vectors", "expert_writes",
    "find_moe", "moe_family", "route", "value_vector",
]
