"""The device-selected contribution (``contribution(..., top_k=)`` / ``threshold=``): each layer's scores computed
inside the forward, in a hook on the neuron site, from that layer's activations at the target positions and
``W_out^T u_t`` of that layer, and selected on the device, so that the dense score grid never reaches the host.

- Small calls (the stacked scores fit :data:`~neuronscope.attribute.stacked.STACK_LIMIT`, one top-k buffer): two
  kernels a layer and one top-k after the forward (:func:`~neuronscope.attribute.contribution_graphs.stacked_top_k`),
  on a GPU replayed from a CUDA graph when the call's shape came before
  (:func:`~neuronscope.attribute.contribution_graphs.graphed_top_k`).
- Otherwise layer by layer: each layer's scores into one ``[rows, layers × d_ff]`` buffer (≤ 512 MiB), or merged
  into a running top-k, or thresholded (:mod:`neuronscope.attribute.selection`).

The final-norm scale ``1 / σ`` is a positive factor per (example, target), so the top-k is selected before it is
known and scaled after the forward; a threshold on ``s / σ`` keeps the layers' scores until ``σ`` is known.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from neuronscope.attribute import contribution_graphs as fast
from neuronscope.attribute import selection
from neuronscope.attribute.contribution import SelectedScores, centred_products, score_dtype
from neuronscope.attribute.selection import BufferedTopK, ThresholdSelection, to_host, top_k_selector
from neuronscope.attribute.stacked import fits
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models.accounting import FinalNorm
from neuronscope.models.adapter import ModelAdapter
from neuronscope.models.devices import on_device
from neuronscope.results.scores import NeuronScores
from neuronscope.trace import capture
from neuronscope.trace.forward_options import activations_only
from neuronscope.trace.graphs import flat_rows
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.sites import resolve_site


def row_projections(weights: torch.Tensor, directions: torch.Tensor, row_target: torch.Tensor,
                    centre: bool) -> torch.Tensor:
    """``<w_i, u_r>`` of one layer's value vectors ``weights [d_ff, d]`` for each score row ``r``: ``[rows, d_ff]``
    in the score dtype on the weights' device, row ``r`` being direction ``row_target[r]`` of ``directions [m, d]``:
    :func:`centred_products` gathered by row."""
    return centred_products(weights, directions, centre).index_select(0, row_target)


def _score_rows(adapter: ModelAdapter, targets: TargetSet, positions: torch.Tensor, length: int,
                norm: FinalNorm | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(flat_index, directions, row_target)``: each score row's token ``b·T + position`` in the forward (on the
    host), the distinct target directions ``u_t`` ``[m, d]`` (the final norm's gain applied when given) and which
    one each row uses (on the host)."""
    device = adapter.unembedding().device
    unique, target_index = targets.token_ids.unique(return_inverse=True)
    directions = adapter.unembedding()[on_device(unique, device)]
    if norm is not None:
        directions = directions.to(norm.gain.dtype) * norm.gain.to(device)
    return flat_rows(positions, length), directions, target_index.reshape(-1)


def selected_contribution(model: nn.Module, adapter: ModelAdapter, batch: Batch, targets: TargetSet,
                          layer_list: list[int], site: str, final_norm: bool, top_k: int | None,
                          threshold: float | None, absolute: bool, graphs: bool) -> NeuronScores | SelectedScores:
    """Scores computed inside the forward and selected on the device (module docstring); ``layer_list``: the
    scored layers (each with an FFN)."""
    device = adapter.unembedding().device
    n_rows, n_targets = targets.token_ids.shape
    rows = n_rows * n_targets
    positions = torch.where(targets.valid, targets.positions, torch.full_like(targets.positions, batch.seq_len - 1))
    norm = adapter.final_norm() if final_norm else None
    weights = {layer: adapter.value_vectors(layer) for layer in layer_list}  # looked up once a call
    dtype = score_dtype(weights[layer_list[0]])
    meta = {"method": "contribution", "site": site, "layers": layer_list, "final_norm": final_norm,
            "targets": targets.describe(), "model": adapter.describe(), "absolute": absolute}
    stacked = top_k is not None and selection.SELECTOR != "running" and fits(adapter.d_ff, list(weights.values()),
                                                                             rows, device)
    if stacked:
        scoring = fast.Scoring(tuple(layer_list), tuple(weights.values()), site, norm,
                               min(top_k, len(layer_list) * adapter.d_ff), absolute, dtype)
        found = fast.graphed_top_k(model, adapter, batch, positions, targets.token_ids, scoring) if graphs else None
        if found is None:  # eager, on the unpadded batch
            flat_index, directions, row_target = _score_rows(adapter, targets, positions, batch.seq_len, norm)
            flat_index, row_target = on_device(torch.stack([flat_index, row_target]), device)
            found = fast.stacked_top_k(model, adapter, batch.inputs, flat_index, directions, row_target, scoring)
        return _kept_top_k(adapter, targets, *found, {**meta, "top_k_kept": top_k})
    flat_index, directions, row_target = _score_rows(adapter, targets, positions, batch.seq_len, norm)
    deferred = final_norm and threshold is not None  # a threshold on s / σ needs σ: select after the forward
    selector: Any = (top_k_selector(rows, min(top_k, len(layer_list) * adapter.d_ff), adapter.d_ff,
                                    len(layer_list), device, absolute, dtype)
                     if top_k is not None else ThresholdSelection(threshold, adapter.d_ff, absolute))
    in_place = isinstance(selector, BufferedTopK) and not deferred
    centre = norm is not None and norm.kind == "layer"
    kept_layers: list[tuple[int, torch.Tensor]] = []
    per_device: dict[torch.device, tuple[torch.Tensor, ...]] = {}
    for layer in layer_list:
        here = weights[layer].device
        if here not in per_device:  # the host's indices in one pinned copy per device
            index, rows_of = on_device(torch.stack([flat_index, row_target]), here)
            per_device[here] = (index, directions.to(here), rows_of)

    def hook_for(slot: int, layer: int):
        def score(tensor: torch.Tensor, call) -> None:
            if call.offset != 0:
                return None
            here = tensor.device
            index, layer_directions, layer_rows = per_device.get(here) or (
                flat_index.to(here), directions.to(here), row_target.to(here))
            acts = tensor.reshape(-1, tensor.shape[-1]).index_select(0, index)  # [rows, d_ff]
            proj = row_projections(weights[layer], layer_directions, layer_rows, centre)  # [rows, d_ff], score dtype
            if in_place and here == selector.buffer.device:
                torch.mul(acts, proj, out=selector.slot(slot))  # one kernel into the selection buffer
                return None
            scores = (acts.to(proj.dtype) * proj).to(device)
            if deferred:
                kept_layers.append((slot, scores))
            else:
                selector.add(slot, scores)
            return None

        return score

    with HookSet(adapter) as hooks:
        for slot, layer in enumerate(layer_list):
            hooks.add(resolve_site(adapter, site, layer), hook_for(slot, layer))
        if norm is not None:
            last = adapter.n_layers - 1
            with capture(model, sites="resid_post", layers=last, positions=positions) as acts:
                model(**batch.inputs, **activations_only(model))
            sigma = norm.scale(acts.get("resid_post", last).to(device)).reshape(rows, 1)  # [B·n, 1]
        else:
            model(**batch.inputs, **activations_only(model))
            sigma = None
    if top_k is not None:
        values = selector.values if sigma is None else selector.values / sigma.to(selector.values.dtype)
        return _kept_top_k(adapter, targets, values, selector.indices, {**meta, "top_k_kept": top_k})
    return _kept_threshold(adapter, targets, selector, sigma, kept_layers, {**meta, "threshold": threshold})


def _kept_top_k(adapter: ModelAdapter, targets: TargetSet, values: torch.Tensor, indices: torch.Tensor,
                meta: dict[str, Any]) -> NeuronScores:
    """After the forward: the kept top-k ``[rows, k]`` (zero for missing targets) on the host."""
    n_rows, n_targets = targets.token_ids.shape
    values = values * targets.valid.reshape(-1, 1).to(values.device)
    values, indices = to_host(values.reshape(n_rows, n_targets, -1), indices.reshape(n_rows, n_targets, -1))
    return NeuronScores(values, indices, (len(meta["layers"]), adapter.d_ff), meta)


def _kept_threshold(adapter: ModelAdapter, targets: TargetSet, selector: ThresholdSelection,
                    sigma: torch.Tensor | None, kept_layers: list[tuple[int, torch.Tensor]], meta: dict[str, Any]
                    ) -> SelectedScores:
    """After the forward: the scores at or above the threshold (scaled by ``1 / σ``, none for missing targets), on
    the host."""
    n_rows, n_targets = targets.token_ids.shape
    valid = targets.valid.reshape(-1).to(adapter.unembedding().device)
    for slot, scores in kept_layers:
        selector.add(slot, scores / sigma.to(scores.dtype))
    selector.finish()
    flat_rows, flat = selector.coordinates[:, 0], selector.coordinates[:, 1]
    keep = valid[flat_rows]
    coordinates = torch.stack([flat_rows // n_targets, flat_rows % n_targets, flat // adapter.d_ff,
                               flat % adapter.d_ff], dim=1)[keep]
    coordinates, values = to_host(coordinates, selector.values[keep])
    return SelectedScores(coordinates, values, (n_rows, n_targets, len(meta["layers"]), adapter.d_ff), meta)
