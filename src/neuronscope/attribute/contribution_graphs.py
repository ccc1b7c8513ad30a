"""The device-selected top-k contribution in the fewest kernels, and replayed from one CUDA graph per call shape
(model plumbing).

A GPU forward of a 7B model at batch 1 is bound by the host issuing its ~1,300 kernels, so every kernel the
scoring adds shows in the wall time. :func:`stacked_top_k` is the call's device work: two kernels a layer inside
the forward (:class:`~neuronscope.attribute.stacked.StackedScores`), four after it for every layer at once and one
top-k; no host wait. When a call of the same shape comes back, :func:`graphed_top_k` replays it from a CUDA graph,
one launch for the whole call:

- the batch is padded on the right to the next multiple of :data:`~neuronscope.trace.graphs.BUCKET` positions
  above its length (:class:`~neuronscope.trace.graphs.PaddedInputs`): the real positions' activations are the
  unpadded call's up to rounding (in bfloat16 a kept set can differ at its boundary). Every call this module serves runs on the padded batch, its shape's eager first call
  too, so that calls of one shape compute the same numbers whether they are replayed or not;
- every per-call value goes into static buffers before the replay (:class:`_Static`): the padded inputs, each
  score row's flat token index ``b · bucket + position`` and its target token, whose unembedding row the graph
  gathers itself (one direction per score row, not per distinct token: the shape does not depend on how many
  distinct tokens a call has);
- the first call of a shape runs eagerly, the second is captured and replayed, later ones replay
  (:class:`~neuronscope.trace.graphs.ShapeGraphs`); :func:`~neuronscope.trace.graphs.release_graphs` frees them;
- only on CUDA, with ``sdpa`` attention (under ``eager`` attention a capture fails on a host-to-device copy), text
  inputs (token ids, mask, position ids), one device, and no hook on the model but graph-safe ones (a replay would
  freeze an intervention at the captured call); the weights' addresses and the graph-safe hooks present are part
  of the key (:func:`~neuronscope.trace.graphs.model_key`), and so is the address of the final norm's probed
  gain (:func:`~neuronscope.models.accounting.norm_affine` probes a changed norm again, into a new tensor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neuronscope.attribute.selection import BufferedTopK
from neuronscope.attribute.stacked import StackedScores
from neuronscope.inputs import Batch
from neuronscope.models.accounting import FinalNorm
from neuronscope.models.adapter import ModelAdapter
from neuronscope.models.devices import on_device
from neuronscope.trace.forward_options import activations_only, attention_implementation
from neuronscope.trace.graphs import PaddedInputs, flat_rows, graphs_of, padded_length, text_blocker, text_key
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.sites import resolve_site

GRAPHS_PER_MODEL = 16


@dataclass(frozen=True)
class Scoring:
    """What one stacked call scores: the layers (slot ``s`` is ``layers[s]``), their value vectors, the site, the
    final norm to divide by (or None), how many to keep per row, by magnitude or not, in which dtype."""

    layers: tuple[int, ...]
    weights: tuple[torch.Tensor, ...]
    site: str
    norm: FinalNorm | None
    k: int
    absolute: bool
    dtype: torch.dtype


@torch.no_grad()
def stacked_top_k(model: nn.Module, adapter: ModelAdapter, inputs: dict[str, Any], flat_index: torch.Tensor,
                  directions: torch.Tensor, row_target: torch.Tensor, scoring: Scoring
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of ``inputs`` scored by :class:`StackedScores` and one top-k: ``(values, indices) [rows, k]`` on
    the device, values divided by the final norm's ``σ`` at each row's position when ``scoring.norm`` is set.
    Device work only (what a graph records).

    ``flat_index [rows]``: each score row's token ``b · T + position``; ``directions [m, d]`` the target
    directions (final-norm gain applied); ``row_target [rows]``: which one each row uses."""
    centre = scoring.norm is not None and scoring.norm.kind == "layer"
    stacked = StackedScores(list(scoring.weights), directions, row_target, flat_index, scoring.dtype, centre)
    selector = BufferedTopK(row_target.numel(), scoring.k, adapter.d_ff, len(scoring.layers), directions.device,
                            scoring.absolute, scoring.dtype)
    final: list[torch.Tensor] = []

    def record(slot: int):
        def hook(tensor: torch.Tensor, call) -> None:
            if call.offset == 0:
                stacked.record(slot, tensor)

        return hook

    def last_rows(tensor: torch.Tensor, call) -> None:
        final.append(tensor.reshape(-1, tensor.shape[-1]).index_select(0, stacked.flat_index))

    with HookSet(adapter) as hooks:
        for slot, layer in enumerate(scoring.layers):
            hooks.add(resolve_site(adapter, scoring.site, layer), record(slot))
        if scoring.norm is not None:
            hooks.add(resolve_site(adapter, "resid_post", adapter.n_layers - 1), last_rows)
        model(**inputs, **activations_only(model))
    stacked.write(selector.whole())
    values = selector.values
    if scoring.norm is not None:
        values = values / scoring.norm.scale(final[0].to(values.device)).to(values.dtype)
    return values, selector.indices


@dataclass
class _Static:
    """The buffers a graph reads: the padded inputs ``[B, bucket]``, each score row's flat token index and target
    token ``[rows]``, and the rows' directions' index (``arange(rows)``, fixed)."""

    inputs: PaddedInputs
    flat_index: torch.Tensor
    tokens: torch.Tensor
    row_target: torch.Tensor

    @classmethod
    def empty(cls, inputs: dict[str, torch.Tensor], bucket: int, rows: int) -> _Static:
        device = inputs["input_ids"].device
        return cls(PaddedInputs.empty(inputs, bucket), torch.zeros(rows, dtype=torch.long, device=device),
                   torch.zeros(rows, dtype=torch.long, device=device), torch.arange(rows, device=device))

    def fill(self, inputs: dict[str, torch.Tensor], flat_index: torch.Tensor, tokens: torch.Tensor) -> None:
        self.inputs.fill(inputs)
        self.flat_index.copy_(flat_index)
        self.tokens.copy_(tokens)


def _call(model: nn.Module, adapter: ModelAdapter, static: _Static, scoring: Scoring
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The function a graph records: the rows' directions gathered on the device, then :func:`stacked_top_k`."""
    directions = adapter.unembedding().index_select(0, static.tokens)
    if scoring.norm is not None:
        directions = directions.to(scoring.norm.gain.dtype) * scoring.norm.gain.to(directions.device)
    return stacked_top_k(model, adapter, static.inputs.tensors, static.flat_index, directions, static.row_target, scoring)


def graph_blocker(model: nn.Module, batch: Batch) -> str | None:
    """Why a call on this model and batch cannot be replayed from a graph, or None."""
    return text_blocker(model, dict(batch.inputs), attention_implementation(model))


def graphed_top_k(model: nn.Module, adapter: ModelAdapter, batch: Batch, positions: torch.Tensor,
                  tokens: torch.Tensor, scoring: Scoring) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`stacked_top_k`'s ``(values, indices)`` of this call on its padded batch: replayed from its shape's CUDA
    graph (valid until the next replay: copy them out), or run eagerly on the same padded inputs (the shape's first
    call, a failed capture); None for a model, batch or device that cannot be graphed (:func:`graph_blocker`), which
    the unpadded eager path then takes.

    ``positions [B, n]``: each target's producing position (in range); ``tokens [B, n]``: the target tokens."""
    if graph_blocker(model, batch) is not None:
        return None
    bucket = padded_length(batch.seq_len)
    rows = tokens.numel()
    # the final norm's gain is probed from the module (a new tensor whenever the norm changes): its address too
    key = (rows, scoring.layers, scoring.site, scoring.k, scoring.absolute,
           None if scoring.norm is None else scoring.norm.gain.data_ptr(), text_key(model, dict(batch.inputs), bucket))
    flat_index, tokens = on_device(torch.stack([flat_rows(positions, bucket), tokens.cpu().reshape(-1)]),
                                   batch.input_ids.device)

    def fresh() -> _Static:
        static = _Static.empty(dict(batch.inputs), bucket, rows)
        static.fill(batch.inputs, flat_index, tokens)
        return static

    return graphs_of(model, "contribution", GRAPHS_PER_MODEL).replay_or_run(
        key, fresh, lambda static: static.fill(batch.inputs, flat_index, tokens),
        lambda static: _call(model, adapter, static, scoring), "the contribution forward", alive=scoring)
