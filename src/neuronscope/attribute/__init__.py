"""Attribution methods (one module each, registered by name); their targets live in :mod:`neuronscope.inputs.targets`.

Registered methods (``neuronscope models`` lists them): ``contribution`` (Pan et al.), ``integrated_gradients``
(Dai et al.; NA of NA-ICA/QRNCA), ``gradient_x_activation`` (baseline), ``log_probability_increase`` (Yu &
Ananiadou; heads and attention neurons too) and ``comparative`` (CNA).
"""

from neuronscope.attribute.comparative import ComparativeScores, comparative, query_neuron_scores
from neuronscope.attribute.contribution import contribution
from neuronscope.attribute.gradient_x_activation import gradient_x_activation
from neuronscope.attribute.integrated_gradients import integrated_gradients
from neuronscope.attribute.log_probability_increase import (
    HeadSourceScores,
    head_log_probability_increase,
    head_source_log_probability_increase,
    log_probability_increase,
)
from neuronscope.attribute.registry import METHODS, MethodInfo, get_method, list_methods, register

__all__ = [
    "METHODS", "ComparativeScores", "HeadSourceScores", "MethodInfo", "comparative", "contribution", "get_method",
    "gradient_x_activation", "head_log_probability_increase", "head_source_log_probability_increase",
    "integrated_gradients", "list_methods", "log_probability_increase", "query_neuron_scores", "register",
]
