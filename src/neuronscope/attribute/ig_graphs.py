"""Integrated gradients' sequence path replayed from one CUDA graph per shape (model plumbing).

A call of the sequence path (:func:`~neuronscope.attribute.ig_paths._ig_sequence`) is one forward of the prefix,
then per chunk of rows the forwards of its segments and one backward: for the 640 rows of a 32-layer 7B model
thousands of small kernels, which Python and autograd take longer to issue (130-310 ms a call on an H200's host)
than the GPU takes to run them (a replay: 52 ms; BENCHMARKS.md). When a call of the same shape comes back,
:func:`graphed_sequence` replays the whole call from one CUDA graph:

- the prefix (with the scored token, as the eager path runs it) is padded on the right to a multiple of
  :data:`BUCKET` positions, so that prompts of similar lengths share a graph: causal attention leaves the real
  positions as they are, and the rows' mask hides the padded keys
  (:func:`~neuronscope.attribute.prefix_rows.rows_mask`), so the scores are the unpadded call's up to rounding;
- every per-call value (prefix ids and position ids, the scored token and its position id, the target, the prefix
  length, the α grid) is copied into static buffers (:class:`_Static`) before the replay; the chunks are the
  planner's settled ones (:meth:`~neuronscope.attribute.prefix_rows.RowPlanner.settled`);
- the first call of a shape runs eagerly (one prompt never pays for a capture); the second is captured and
  replayed, later ones replay (:class:`~neuronscope.trace.graphs.ShapeGraphs`: one memory pool, at most
  :data:`GRAPHS_PER_MODEL` graphs, the least recently used dropped first); :func:`release_graphs` frees them all;
- only on CUDA with ``sdpa`` attention (under ``eager`` attention the capture fails on a host-to-device copy),
  on one device, without ALiBi, with one mask for every layer (full attention in all layers, attention as every
  layer's token mixer: :func:`~neuronscope.trace.layer_entry.can_enter`), when the model carries no hook but
  graph-safe ones (an intervention's hook could depend on the call: a replay would freeze it), and with the
  weights at the addresses they had at capture (the addresses are part of the key: replaced weights recapture,
  weights edited in place are read as they are).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuronscope.attribute.ig_paths import (
    _add_chunk,
    _layer_major_rows,
    _RowScaler,
)
from neuronscope.attribute.ig_segments import Segment, chunk_grads, chunk_layout, entry_prefix
from neuronscope.attribute.prefix_rows import (
    RowPlanner,
    rows_mask,
)
from neuronscope.models.adapter import get_adapter
from neuronscope.runs.batching import free_memory
from neuronscope.trace.forward_options import attention_implementation
from neuronscope.trace.graphs import BUCKET, ShapeGraphs, graphs_of, model_key, release_graphs, replay_blocker
from neuronscope.trace.layer_entry import can_enter

# Prefix positions are padded to a multiple of BUCKET (trace.graphs), so that similar prompts share a graph: each
# padded position costs a prefix forward position (T = 200 pads to 224); prompts of 32-512 positions make 16 graphs,
# all kept.
GRAPHS_PER_MODEL = 32

__all__ = ["BUCKET", "GRAPHS_PER_MODEL", "graph_blocker", "graphed_sequence", "prepared_call", "release_graphs"]


@dataclass
class _Static:
    """The buffers a graph reads: what changes from call to call, at fixed addresses."""

    prefix_ids: torch.Tensor  # [1, bucket] the prefix and the scored token, then copies of the scored token
    prefix_positions: torch.Tensor  # [1, bucket] their position ids, the padding at the scored token's
    token: torch.Tensor  # [1, 1] the scored token, at ...
    token_position: torch.Tensor  # [1, 1] ... its position id
    target: torch.Tensor  # [1] the token whose probability is attributed
    scored: torch.Tensor  # [] the scored token's position among them (how many prefix positions the rows see)
    alphas: torch.Tensor  # [rows] α of the layer-major rows
    alphas_host: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # what ``alphas`` holds

    @classmethod
    def empty(cls, bucket: int, rows: int, ids: torch.Tensor, positions: torch.Tensor) -> _Static:
        device = ids.device
        return cls(torch.zeros(1, bucket, dtype=ids.dtype, device=device),
                   torch.zeros(1, bucket, dtype=positions.dtype, device=device),
                   torch.zeros(1, 1, dtype=ids.dtype, device=device),
                   torch.zeros(1, 1, dtype=positions.dtype, device=device),
                   torch.zeros(1, dtype=torch.long, device=device),
                   torch.zeros((), dtype=torch.long, device=device),
                   torch.zeros(rows, dtype=torch.float64, device=device))

    def fill(self, ids: torch.Tensor, positions: torch.Tensor, scored: int, token: int, row_alpha: torch.Tensor
             ) -> None:
        """One call's values (``ids`` / ``positions`` on the device: device-to-device copies, no host wait)."""
        for static, values in ((self.prefix_ids, ids), (self.prefix_positions, positions)):
            static[0, :scored + 1].copy_(values[:scored + 1])
            static[0, scored + 1:].copy_(values[scored].expand(static.shape[1] - scored - 1))
        self.token.copy_(ids[scored].view(1, 1))
        self.token_position.copy_(positions[scored].view(1, 1))
        self.target.fill_(token)
        self.scored.fill_(scored)
        if not torch.equal(row_alpha, self.alphas_host):  # the grid rarely changes: no host copy per call
            self.alphas.copy_(row_alpha)
            self.alphas_host = row_alpha.clone()


def _rows_call(model: nn.Module, scaler: _RowScaler, static: _Static, plans: list[tuple[dict, list[Segment]]],
               slot_of: dict[int, int], steps: int, boolean: bool) -> torch.Tensor:
    """One call of the sequence path on the padded prefix of ``static``: NA ``[layers, d_ff]`` on the device.

    Device work only (no host wait): it runs eagerly (a test on any device) and is what is captured. ``plans``:
    per chunk its scaler plan and its segments (:func:`~neuronscope.attribute.ig_segments.chunk_layout`).
    """
    device = static.prefix_ids.device
    cache, residuals = entry_prefix(model, static.prefix_ids, static.prefix_positions, static.scored.view(1))
    # the rows see the real prefix only: neither the padding nor the scored token's own cached key
    visible = torch.arange(static.prefix_ids.shape[1], device=device) < static.scored
    dtype = next(model.parameters()).dtype

    def inputs_for(count: int) -> dict[str, Any]:
        return {"input_ids": static.token.expand(1, count), "position_ids": static.token_position.expand(1, count),
                "attention_mask": rows_mask(visible, count, boolean, dtype)}

    sums = None
    for index, (plan, segments) in enumerate(plans):
        chunk_cache = cache if index == len(plans) - 1 else copy.deepcopy(cache)
        grads = chunk_grads(model, scaler, plan, segments, inputs_for, chunk_cache, residuals, static.target)
        sums = _add_chunk(sums, scaler, plan, grads, slot_of)
    activations, grad_sums = sums
    return activations * grad_sums / steps


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    static: _Static
    out: torch.Tensor
    plans: list  # the index tensors the graph reads stay alive with it


def graph_blocker(model: nn.Module, device: torch.device) -> str | None:
    """Why a call on this model cannot be replayed from a graph, or None."""
    common = replay_blocker(model, device, attention_implementation(model))
    if common is not None:
        return common
    if get_adapter(model).position_bias:
        return "ALiBi position biases (the rows run as batch rows)"
    if not can_enter(get_adapter(model)):
        return "layers with a sliding window, or no single layer list"
    return None


def graphed_sequence(model: nn.Module, scaler: _RowScaler, ids: torch.Tensor, positions: torch.Tensor,
                     scored: int, token: int, layers: list[int], alphas: torch.Tensor, planner: RowPlanner,
                     site: str) -> torch.Tensor | None:
    """NA ``[layers, d_ff]`` (on the host) of one (example, target) from its shape's CUDA graph, or None when this
    call is to run eagerly: the first of its shape, a planner still trying sizes, or a model or device that cannot
    be graphed (:func:`graph_blocker`). Same arguments as :func:`~neuronscope.attribute.ig_paths._ig_sequence`."""
    total = len(layers) * alphas.numel()
    if graph_blocker(model, ids.device) or not planner.settled(total, scored, ids.device):
        return None
    chunks = planner.chunks(total, scored, ids.device)
    bucket = -(-(scored + 1) // BUCKET) * BUCKET
    key = (bucket, tuple(chunks), tuple(layers), alphas.numel(), site, ids.dtype, positions.dtype,
           model_key(model))
    graphs = graphs_of(model, "integrated_gradients", GRAPHS_PER_MODEL)
    _, row_alpha = _layer_major_rows(layers, alphas)
    entry = graphs.replayable(key)
    if entry is not None:
        entry.static.fill(ids, positions, scored, token, row_alpha)
        entry.graph.replay()
        return entry.out.cpu()
    if graphs.eager_first(key):
        return None
    return _capture_call(model, scaler, graphs, key, ids, positions, scored, token, layers, alphas, chunks)


def prepared_call(model: nn.Module, scaler: _RowScaler, bucket: int, ids: torch.Tensor, positions: torch.Tensor,
                  scored: int, token: int, layers: list[int], alphas: torch.Tensor, chunks: list[int]
                  ) -> tuple[_Static, list, functools.partial]:
    """``(static, plans, call)``: the buffers of one call filled, the chunks' plans (reading α from the buffers)
    and the function a graph records (``call()`` → NA ``[layers, d_ff]``; it also runs eagerly, on any device)."""
    row_layer, row_alpha = _layer_major_rows(layers, alphas)
    static = _Static.empty(bucket, row_layer.numel(), ids, positions)
    static.fill(ids, positions, scored, token, row_alpha)
    starts = [sum(chunks[:index]) for index in range(len(chunks))]
    plans = [chunk_layout(row_layer[start:start + rows], static.alphas, start, True)
             for start, rows in zip(starts, chunks, strict=True)]
    boolean = attention_implementation(model) == "sdpa"
    call = functools.partial(_rows_call, model, scaler, static, plans,
                             {layer: slot for slot, layer in enumerate(layers)}, alphas.numel(), boolean)
    return static, plans, call


def _capture_call(model: nn.Module, scaler: _RowScaler, graphs: ShapeGraphs, key: tuple, ids: torch.Tensor,
                  positions: torch.Tensor, scored: int, token: int, layers: list[int], alphas: torch.Tensor,
                  chunks: list[int]) -> torch.Tensor | None:
    """Capture the call into a graph kept under ``key`` and replay it for this call's result; None (the eager path
    then takes the call) when it cannot be captured.

    No eager warm-up on a side stream first: the shape's first call ran eagerly already, and a warm-up on a new
    stream would grow the allocator's pool of that stream by the call's whole working set (seconds at 7B)."""
    static, plans, call = prepared_call(model, scaler, key[0], ids, positions, scored, token, layers, alphas, chunks)
    captured = graphs.capture(call, "the integrated-gradients rows", key)
    if captured is None:
        free_memory()
        return None
    entry = graphs.keep(key, _Graph(captured[0], static, captured[1], plans))
    entry.graph.replay()
    return entry.out.cpu()
