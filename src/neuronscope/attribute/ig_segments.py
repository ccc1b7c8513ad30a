"""How one chunk of integrated-gradients rows runs: its rows join the decoder in segments, each at its own layers
(model plumbing for the sequence path of :mod:`neuronscope.attribute.integrated_gradients`).

Row ``r`` scales layer ``l_r``; below ``l_r`` it computes exactly what the scored token computes in a plain forward.
So the prefix run includes the scored token and keeps every layer's input there (:func:`entry_prefix`), and the
chunk's layers are cut into at most :data:`SEGMENTS` groups: segment ``k`` runs the decoder layers from its first
layer ``J_k`` to the next segment's first layer, on the rows of the earlier segments (their hidden states, still in
the autograd graph) followed by its own rows, which start from the scored token's input to ``J_k``. One backward
through all segments serves every row. For the 640 rows of a 32-layer model in 8 segments that is 11,520 row-layers
instead of 20,480, in 32 layer passes.

Each segment is one forward of the stock model over the decoder layers ``J_k .. J_{k+1} - 1``
(:func:`~neuronscope.trace.layer_entry.entered_at`); the KV cache of the prefix is read and extended at those layers
only, so each layer of the cache sees exactly one segment's rows. Models where layers cannot be entered
(:func:`~neuronscope.trace.layer_entry.can_enter` is False: sliding windows) run one segment of every layer, as
before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neuronscope.models.adapter import get_adapter
from neuronscope.trace.forward_options import takes_logits_to_keep
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.last_step import cache_keyword, returned_cache
from neuronscope.trace.layer_entry import entered_at
from neuronscope.trace.positions import CallState
from neuronscope.trace.sites import resolve_site

SEGMENTS = 8  # the most groups a chunk's rows join the decoder in (each group at its first layer)


@dataclass(frozen=True)
class Segment:
    """One forward of a chunk: decoder layers ``join .. stop - 1`` (``stop`` None: to the last) on ``rows`` rows."""

    join: int
    stop: int | None
    rows: int


def chunk_layout(chunk_layer: torch.Tensor, alphas: torch.Tensor, start: int, enter: bool
                 ) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], list[Segment]]:
    """The scaler's plan and the segments of the layer-major rows ``start ..`` whose layers are ``chunk_layer``
    (a host tensor, one entry per row).

    The plan maps each layer to its rows' indices in the sequence of the segment it joins in (segments stack
    their rows: earlier segments' first) and to their α (a slice of ``alphas``, every row's, on the device).
    ``enter`` False: one segment of every layer.
    """
    ranges = {}
    for layer in dict.fromkeys(chunk_layer.tolist()):  # layer-major: each layer's rows are one range
        where = (chunk_layer == layer).nonzero()[:, 0]
        ranges[layer] = (int(where[0]), int(where[-1]) + 1)
    ordered = sorted(ranges) if enter else list(ranges)
    per = -(-len(ordered) // SEGMENTS) if enter else len(ordered)
    groups = [ordered[index:index + per] for index in range(0, len(ordered), per)]
    plan, segments, offset = {}, [], 0
    for number, group in enumerate(groups):
        for layer in group:
            first, last = ranges[layer]
            plan[layer] = (torch.arange(offset, offset + last - first, device=alphas.device),
                           alphas[start + first:start + last])
            offset += last - first
        stop = groups[number + 1][0] if number + 1 < len(groups) else None
        segments.append(Segment(group[0] if enter else 0, stop, offset))
    return plan, segments


def entry_prefix(model: nn.Module, ids: torch.Tensor, positions: torch.Tensor, where: torch.Tensor
                 ) -> tuple[Any, torch.Tensor]:
    """A forward of ``ids [1, n]`` (no grad) that keeps every layer's input at position ``where`` (``[1]`` long,
    on the device): ``(KV cache, residuals [layers, d_model])``. Device work only (it is captured in graphs)."""
    adapter = get_adapter(model)
    kept: list[torch.Tensor | None] = [None] * adapter.n_layers

    def keeper(layer: int):
        def keep(tensor: torch.Tensor, call: CallState) -> None:
            kept[layer] = tensor[0].index_select(0, where)[0]

        return keep

    with HookSet(adapter, graph_safe=True, owned=True) as hooks:
        for layer in range(adapter.n_layers):
            hooks.add(resolve_site(adapter, "resid_pre", layer), keeper(layer))
        with torch.no_grad():
            out = model(input_ids=ids, position_ids=positions, use_cache=True)
    return returned_cache(out), torch.stack(kept)


def target_probability(logits: torch.Tensor, target: int | torch.Tensor) -> torch.Tensor:
    """``P(target)`` of each row of ``logits [rows, vocab]``, in at least float32. ``target``: a token id, or a
    ``[1]`` long tensor on the device (which a CUDA graph's static buffer can hold)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(-1)[:, target]


def chunk_grads(model: nn.Module, scaler: Any, plan: dict, segments: list[Segment],
                inputs_for: Callable[[int], dict[str, Any]], cache: Any, residuals: torch.Tensor | None,
                target: torch.Tensor, observe: Callable[[], None] | None = None) -> tuple[torch.Tensor, ...]:
    """Forward of a chunk's segments, then one backward: the gradients of ``Σ P(target)`` (over the rows of the
    last segment: all of them) with respect to the plan's leaves, layer by layer.

    ``inputs_for(rows)``: the query tokens' inputs of a segment of ``rows`` rows (ids, position ids, 4-D mask);
    ``residuals``: every layer's input at the scored position (None for a single segment of every layer);
    ``observe`` runs between the forward and the backward.
    """
    adapter = get_adapter(model)
    extra: dict[str, Any] = {} if cache is None else {cache_keyword(model): cache, "use_cache": True}
    keeps_few_logits = takes_logits_to_keep(model)
    scaler.start(plan, tokens=True)
    try:
        with torch.enable_grad():
            hidden = None
            for segment in segments:
                residual = None
                if (residuals is not None and segment.join > 0) or hidden is not None:
                    new = segment.rows - (0 if hidden is None else hidden.shape[1])
                    joining = residuals[segment.join].expand(1, new, -1)
                    residual = joining if hidden is None else torch.cat([hidden, joining.to(hidden.dtype)], dim=1)
                inputs = {**inputs_for(segment.rows), **extra}
                if segment.stop is not None and keeps_few_logits:
                    inputs["logits_to_keep"] = 1  # an inner segment's logits are not used
                with entered_at(adapter, segment.join, residual, segment.stop) as entry:
                    logits = model(**inputs).logits[0]
                hidden = entry.output
            probability = target_probability(logits, target)
            if observe is not None:
                observe()
            return torch.autograd.grad(probability.sum(), [scaler.leaves[layer] for layer in plan])
    finally:
        scaler.stop()
