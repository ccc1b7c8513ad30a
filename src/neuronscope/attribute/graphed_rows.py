"""A forward's activations at a few chosen positions, replayed from one CUDA graph per call shape (model plumbing for
the frozen-readout scorers: LPI of neurons and heads).

On a GPU a small forward is bound by the host issuing its kernels: exact LPI of one 7B layer runs a one-layer
forward of 32 tokens whose kernels take the host longer to issue than the GPU takes to run them, and every layer of
a 7B model at batch 1 the same. :func:`graphed_rows` runs such a forward from a CUDA graph instead:

- the batch is padded on the right (:class:`~neuronscope.trace.graphs.PaddedInputs`: the real positions compute
  what the unpadded batch computes, up to rounding), at every call of a shape, its eager first call too, so that
  the calls of one shape compute the same numbers whether they are replayed or not;
- hooks gather the rows ``b · bucket + position`` of each requested ``(site, layer)`` into ``[B, n, width]`` on the
  device, from a static buffer of flat indices;
- a shape's first call runs eagerly with the model's logits at the positions, for the caller's readout check
  (``check``); once a call has passed it, the next is captured with ``logits_to_keep=1`` (the scores need no
  logits) and later calls replay it (:class:`~neuronscope.trace.graphs.ShapeGraphs`, path ``"rows"``);
- the key: batch size, padded length, positions' shape, the requests, the inputs' dtypes and
  :func:`~neuronscope.trace.graphs.model_key` (weights' addresses, graph-safe hooks present);
- only where :func:`~neuronscope.trace.graphs.text_blocker` lets it (CUDA, sdpa, text inputs, one device, no hook
  that is not graph-safe); None otherwise, and the caller captures eagerly.

What a replay returns lives in the graphs' memory pool until the next replay: the caller uses it within its call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from neuronscope.inputs import Batch
from neuronscope.models.adapter import ModelAdapter
from neuronscope.models.devices import on_device
from neuronscope.trace.forward_options import activations_only, attention_implementation
from neuronscope.trace.graphs import PaddedInputs, flat_rows, graphs_of, padded_length, text_blocker, text_key
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.sites import resolve_site

GRAPHS_PER_MODEL = 16
Request = tuple[str, int]


@dataclass
class Rows:
    """The activations of one call: ``get(site, layer)`` → ``[B, n, width]`` (a
    :class:`~neuronscope.trace.capture.Capture`'s reading for the requested sites), and on an eager call the model's
    logits at the positions ``[B, n, V]`` (None on a replay)."""

    tensors: dict[Request, torch.Tensor]
    logits: torch.Tensor | None = None

    def get(self, site: str, layer: int) -> torch.Tensor:
        return self.tensors[(site, layer)]


def gathered_rows(model: nn.Module, adapter: ModelAdapter, inputs: dict[str, torch.Tensor], flat_index: torch.Tensor,
                  shape: tuple[int, int], requests: tuple[Request, ...], logits: bool) -> Rows:
    """One forward of ``inputs`` that keeps, for each request, the rows ``flat_index`` (``b · T + position``) of its
    site as ``[*shape, width]``; with ``logits`` the model's logits at those rows too. Device work only (what a
    graph records when ``logits`` is False)."""
    kept: dict[Request, torch.Tensor] = {}

    def keep(request: Request):
        def hook(tensor: torch.Tensor, call) -> None:
            width = tensor.shape[-1]
            kept[request] = tensor.reshape(-1, width).index_select(0, flat_index).view(*shape, width)

        return hook

    with HookSet(adapter, graph_safe=True, owned=True) as hooks:
        for request in requests:
            hooks.add(resolve_site(adapter, *request), keep(request))
        output = model(**inputs, **({"use_cache": False} if logits else activations_only(model)))
    if not logits:
        return Rows(kept)
    scores = output.logits
    return Rows(kept, scores.reshape(-1, scores.shape[-1]).index_select(0, flat_index).view(*shape, -1))


def graph_blocker(model: nn.Module, batch: Batch) -> str | None:
    """Why a forward of this model on this batch cannot be replayed from a graph, or None."""
    return text_blocker(model, dict(batch.inputs), attention_implementation(model))


def graphed_rows(model: nn.Module, adapter: ModelAdapter, batch: Batch, positions: torch.Tensor,
                 requests: tuple[Request, ...], check: Callable[[Rows], None]) -> Rows | None:
    """The requested sites at ``positions [B, n]`` (in range) of this batch's padded forward: replayed from its
    shape's CUDA graph, or run eagerly on the same padded inputs (the shape's first call, a failed capture); None
    where no graph can be used (:func:`graph_blocker`).

    ``check(rows)`` runs on every eager call, whose rows carry the model's logits at the positions (the caller's
    readout check): a shape is captured only after a call of it passed, so that a refused model stays refused."""
    if graph_blocker(model, batch) is not None:
        return None
    inputs = dict(batch.inputs)
    bucket = padded_length(batch.seq_len)
    shape = (int(positions.shape[0]), int(positions.shape[1]))
    key = (shape, requests, text_key(model, inputs, bucket))
    flat = on_device(flat_rows(positions, bucket), batch.input_ids.device)
    graphs = graphs_of(model, "rows", GRAPHS_PER_MODEL)

    def fresh() -> tuple[PaddedInputs, torch.Tensor]:
        padded = PaddedInputs.empty(inputs, bucket)
        padded.fill(inputs)
        return padded, flat

    def refill(static: tuple[PaddedInputs, torch.Tensor]) -> None:
        static[0].fill(inputs)
        static[1].copy_(flat)

    def eager(static: tuple[PaddedInputs, torch.Tensor]) -> Rows:  # the shape's first call, or one not captured
        rows = gathered_rows(model, adapter, static[0].tensors, static[1], shape, requests, logits=True)
        try:
            check(rows)
        except Exception:
            graphs.forget(key)  # not captured on the next call: it is checked again
            raise
        return rows

    return graphs.replay_or_run(
        key, fresh, refill, lambda static: gathered_rows(model, adapter, static[0].tensors, static[1], shape, requests,
                                                         logits=False), "the scoring forward", eager=eager)
