"""What the decoder of a model receives for a batch: the token embeddings, with a vision-language model's image
features already in place of its image tokens.

The model's own forward builds them (vision tower, projector, the family's way of scattering features into the
sequence), so no family fact is repeated here: a pre-hook on the decoder (the adapter's ``decoder``, the module
that takes ``inputs_embeds``) records them and stops the call before the first decoder layer runs.
"""

from __future__ import annotations

import torch
from torch import nn

from neuronscope.errors import UnsupportedModelError
from neuronscope.inputs.batch import Batch
from neuronscope.models.adapter import get_adapter


class _Reached(Exception):
    def __init__(self, embeds: torch.Tensor):
        super().__init__("the decoder was reached")
        self.embeds = embeds


@torch.no_grad()
def prompt_embeddings(model: nn.Module, batch: Batch) -> torch.Tensor:
    """``[batch, T, d]``: the decoder's ``inputs_embeds`` for ``batch`` (moved to the model already), in the
    positions of the batch (left padding included)."""
    decoder = get_adapter(model).decoder

    def reached(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                raise UnsupportedModelError(f"{type(decoder).__name__} was called without input_ids or inputs_embeds")
            embeds = model.get_input_embeddings()(ids)
        raise _Reached(embeds)

    handle = decoder.register_forward_pre_hook(reached, with_kwargs=True)
    try:
        model(**batch.inputs, use_cache=False)
    except _Reached as stop:
        return stop.embeds
    finally:
        handle.remove()
    raise UnsupportedModelError(f"{type(model).__name__}'s forward never called its decoder {type(decoder).__name__}")
