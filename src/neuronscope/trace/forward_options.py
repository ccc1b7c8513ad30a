"""What a model's forward takes: keyword options for a caller that reads only activations or the last position's
logits, and the attention implementation its decoder runs.

Example:
    >>> model(**batch.inputs, **activations_only(model))     # no KV cache, one position's logits
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from neuronscope.models import lookup


def takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' causal LMs and most VLMs do)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def activations_only(model: nn.Module) -> dict[str, Any]:
    """Forward options for a forward whose only use is its activations: no KV cache (``use_cache=False``: at
    batch 8 × 620 tokens a 7B model's cache is 19 % of its weights) and ``logits_to_keep=1`` when the model's
    forward takes it (the scores need no logits)."""
    return {"use_cache": False, **({"logits_to_keep": 1} if takes_logits_to_keep(model) else {})}


def text_config(model: nn.Module) -> Any:
    """The configuration of the model's language part (the model's own for a text model):
    :func:`neuronscope.models.lookup.text_config` of its config."""
    return lookup.text_config(model.config)


def attention_implementation(model: nn.Module) -> str:
    """The attention implementation the decoder runs (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``, ...)."""
    return str(getattr(text_config(model), "_attn_implementation", None) or "eager")
