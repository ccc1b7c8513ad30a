"""Log-probability increase (Yu & Ananiadou 2024) of the neurons of a mixture-of-experts model.

``LPI(v | r) = log softmax(bs(r + v))[w] − log softmax(bs(r))[w]`` with the final norm frozen at the final
residual's scale (:mod:`neuronscope.attribute.log_probability_increase`), where for expert neuron ``(l, e, i)``
``v = s · g_e · a_{e,i} · w_{e,i}`` — what the neuron writes into the residual stream (``s``: the family's
residual multiplier, Granite's ``residual_multiplier``, 1 elsewhere; ``g_e``: the router weight on the expert's
output, the shared expert's gate) — and ``r`` is the residual the MoE block reads (``ffn_in``). Dense layers keep
``v = a_i · w_i``. Unrouted experts' neurons write nothing, so their LPI is 0; only the routed experts of each
target's token are scored (exactly, over the full vocabulary or a candidate set).

Example:
    >>> scores = moe_log_probability_increase(model, batch)          # targets: the model's own predictions
    >>> scores.top_table(10)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from neuronscope.attribute.log_probability_increase import (
    DEFAULT_CHUNK,
    _meta,
    _readout,
    _rows,
    _targets_or_prediction,
    log_probability_increase_from_logits,
)
from neuronscope.attribute.moe_contribution import sub_layout
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models.adapter import get_adapter
from neuronscope.models.moe import expert_value_vectors
from neuronscope.results.expert_scores import ExpertNeuronScores
from neuronscope.trace import capture
from neuronscope.trace.experts import ExpertCapture, capture_experts


def _written(adapter, acts: ExpertCapture, layer: int, row: int, col: int) -> list[tuple[slice, torch.Tensor,
                                                                                         torch.Tensor]]:
    """What the neurons of one layer write at one target: ``(flat ids within the layer, coefficients [c],
    value vectors [c, d])`` per routed / shared expert (a dense layer: one block)."""
    moe = adapter.moe.layers.get(layer)
    if moe is None:
        return [(slice(0, adapter.d_ff), acts.dense(layer)[row, col], adapter.value_vectors(layer))]
    routing = acts.moe(layer)
    out = []
    for slot, expert in enumerate(routing.experts[row, col].tolist()):
        start = expert * moe.width
        coefficient = routing.weights[row, col, slot].to(routing.acts.dtype) * routing.acts[row, col, slot]
        out.append((slice(start, start + moe.width), coefficient, expert_value_vectors(moe, expert)))
    start = moe.n_experts * moe.width
    for j, width in enumerate(moe.shared_widths):
        coefficient = routing.shared_weights[j][row, col].to(routing.acts.dtype) * routing.shared_acts[j][row, col]
        out.append((slice(start, start + width), coefficient, expert_value_vectors(moe, moe.shared_id(j))))
        start += width
    return out


@torch.no_grad()
def moe_log_probability_increase(
    model: nn.Module,
    batch: Batch,
    targets: TargetSet | None = None,
    *,
    layers: list[int] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    candidates: Sequence[int] | torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float32,
    final_scale: torch.Tensor | None = None,
) -> ExpertNeuronScores:
    """Exact LPI of every neuron of an MoE model's chosen layers for each target (see the module docstring).

    Args: as :func:`neuronscope.attribute.log_probability_increase` (``unit="neuron"``, ``final_scale``).

    Returns:
        :class:`ExpertNeuronScores` ``[examples, targets, neurons]`` (0 for unrouted experts and missing targets).

    Example:
        >>> scores = moe_log_probability_increase(model, batch, targets, layers=[3], candidates=range(1000))
    """
    if chunk_size < 1:
        raise NeuronscopeError(f"chunk_size must be at least 1, got {chunk_size}")
    adapter = get_adapter(model)
    targets = _targets_or_prediction(model, batch, targets)
    targets.check(batch.seq_len, adapter.vocab_size)
    layer_list = adapter.resolve_layers(layers)
    readout = _readout(adapter, targets, candidates, compute_dtype)
    columns = readout.column(targets.token_ids)
    last = adapter.n_layers - 1
    positions = torch.where(targets.valid, targets.positions, torch.full_like(targets.positions, batch.seq_len - 1))
    with capture_experts(model, layers=layer_list, positions=positions, to=readout.device) as acts, \
            capture(model, ["ffn_in", "resid_post"], sorted(set(layer_list) | {last}), positions,
                    to=readout.device) as sites:
        model(**batch.inputs)
    sigma = adapter.final_norm().scale(sites.get("resid_post", last))  # [B, n, 1]
    if final_scale is not None:  # another run's σ (CNA: the original condition's)
        sigma = torch.as_tensor(final_scale).float().reshape(sigma.shape).to(sigma.device)
    layout = sub_layout(adapter, layer_list)
    scores = torch.zeros(*targets.token_ids.shape, layout.n_neurons, device=readout.device)
    scale = adapter.moe.residual_scale
    for layer in layer_list:
        base = readout.logits(sites.get("ffn_in", layer).float(), sigma)  # [B, n, V']
        offset = layout.layer_block(layer).start
        for row, col in _rows(targets):
            for ids, coefficients, vectors in _written(adapter, acts, layer, row, col):
                coefficients = coefficients.float() * scale / sigma[row, col]
                for start in range(0, coefficients.numel(), chunk_size):
                    stop = min(start + chunk_size, coefficients.numel())
                    directions = readout.delta(vectors[start:stop])  # [c, V']
                    scores[row, col, offset + ids.start + start:offset + ids.start + stop] = (
                        log_probability_increase_from_logits(base[row, col], directions, int(columns[row, col]),
                                                             readout.softcap, scale=coefficients[start:stop]))
    meta = _meta("log_probability_increase", adapter, targets, readout, unit="neuron", site="neuron",
                 layers=layer_list, residual_scale=scale)
    return ExpertNeuronScores(scores.cpu(), layout, meta=meta)
