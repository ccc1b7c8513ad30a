"""Attribution methods (one module each, registered by name) and their targets."""

from neuronscope.attribute.registry import METHODS, MethodInfo, get_method, list_methods, register
from neuronscope.attribute.targets import (
    TargetSet,
    continuation_targets,
    prediction_targets,
    token_targets,
    word_targets,
    word_token,
)

__all__ = [
    "METHODS", "MethodInfo", "TargetSet", "continuation_targets", "get_method", "list_methods",
    "prediction_targets", "register", "token_targets", "word_targets", "word_token",
]
