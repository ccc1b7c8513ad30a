"""Run a slice of a decoder's layers, with a given residual stream as the first one's input (model plumbing).

Integrated gradients' rows of layer ``l`` compute, below ``l``, exactly what the scored token computes in a plain
forward: only their input to some layer ``a ≤ l`` is needed. :func:`entered_at` runs the stock model with its
layer list holding ``layers[a:]`` for the time of a forward (each attention module keeps its own layer index, so a
KV cache is still read and written at the right layers) and replaces the input of layer ``a`` with a given
residual stream; the embedding still runs (its output is replaced), the final norm and the head run as usual. It
can also stop before the last layer (``layers[a:b]``) and hand back the output of layer ``b - 1``.

Only for decoders whose layers all take the same mask (:func:`can_enter`): models that pick a mask per layer
type by the layer's index in the list would pick the wrong one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from neuronscope.models.adapter import ModelAdapter
from neuronscope.models.lookup import LAYER_LIST_NAMES, first_attr
from neuronscope.trace.forward_options import text_config
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.sites import resolve_site


def full_attention_everywhere(model: nn.Module) -> bool:
    """Whether every decoder layer attends to all earlier keys (no sliding window, one layer type)."""
    config = text_config(model)
    kinds = set(getattr(config, "layer_types", None) or ())
    if kinds:
        return kinds == {"full_attention"}
    return getattr(config, "sliding_window", None) is None


def can_enter(adapter: ModelAdapter) -> bool:
    """Whether :func:`entered_at` serves this model: a dense decoder of a declared family (generic adapters are not
    checked against it), one layer list, attention as every layer's token mixer and full attention in each."""
    return (adapter.moe is None and not adapter.generic and first_attr(adapter.decoder, LAYER_LIST_NAMES)[0] is not None
            and all(mixer == "attention" for mixer in adapter.mixers) and full_attention_everywhere(adapter.model))


@dataclass
class Entry:
    """What :func:`entered_at` hands back: the output of its last layer when it stops early (else None)."""

    output: torch.Tensor | None = None


@contextmanager
def entered_at(adapter: ModelAdapter, first: int, residual: torch.Tensor | None, stop: int | None = None
               ) -> Iterator[Entry]:
    """Within the block, forwards run decoder layers ``first .. stop - 1`` only (``stop`` None: to the last layer),
    with ``residual`` (``[d_model]`` for every position, or the layer input's whole shape) as the input of layer
    ``first`` (None: the input the layers before would give, i.e. ``first`` must be 0). With ``stop``, the output of
    layer ``stop - 1`` is kept in the yielded :class:`Entry` (the final norm and the head still run on it)."""
    entry = Entry()
    if first == 0 and stop is None and residual is None:
        yield entry
        return
    if residual is None and first != 0:
        raise ValueError("entering the decoder past layer 0 needs the residual stream to start from")
    name, layers = first_attr(adapter.decoder, LAYER_LIST_NAMES)
    with HookSet(adapter, graph_safe=True, owned=True) as hooks:
        if residual is not None:
            hooks.add(resolve_site(adapter, "resid_pre", first),
                      lambda tensor, call: residual.expand_as(tensor).contiguous())
        if stop is not None:

            def keep(tensor: torch.Tensor, call) -> None:
                entry.output = tensor

            hooks.add(resolve_site(adapter, "resid_post", stop - 1), keep)
        setattr(adapter.decoder, name, nn.ModuleList(list(layers)[first:stop]))
        try:
            yield entry
        finally:
            setattr(adapter.decoder, name, layers)
