"""The fused expert tensors of one MoE layer read as neurons: activations of routed tokens, value vectors, biases.

An expert's neuron activations ``h [r, f]`` (the input of its down projection) are recomputed from the experts
module's own weights and its own gating function (``_apply_gate`` of transformers' experts interface, which holds
gpt-oss's clamped, biased activation; ``up · act(gate)`` for Llama-4), for the tokens routed to it. The value
vector of neuron ``i`` of expert ``e`` is ``down_proj[e, :, i]`` (``down_proj[e, i, :]`` when transposed) —
returned as views, so that edits write into the fused parameter.
"""

from __future__ import annotations

import torch
from torch import nn

from neuronscope.errors import InputError
from neuronscope.models.moe.spec import ExpertLayer
from neuronscope.results.neuron_layout import DENSE


def expert_value_vectors(layer: ExpertLayer, expert: int) -> torch.Tensor:
    """Value vectors ``[width, d_model]`` (a view) of routed expert ``expert`` or shared expert ``E + j``."""
    if 0 <= expert < layer.n_experts:
        down = layer.experts.down_proj[expert]
        return down if layer.transposed else down.t()
    j = expert - layer.n_experts
    if 0 <= j < len(layer.shared):
        return layer.shared[j].down_proj.weight.t()
    raise InputError(f"layer {layer.layer} has experts 0..{layer.n_experts - 1} and shared experts "
                     f"{layer.n_experts}..{layer.n_experts + len(layer.shared) - 1}; got {expert}")


def expert_bias(layer: ExpertLayer, expert: int) -> torch.Tensor | None:
    """The bias ``[d_model]`` added by expert ``expert``'s down projection (weighted by its router weight like its
    neurons), or None."""
    if 0 <= expert < layer.n_experts:
        return layer.experts.down_proj_bias[expert] if layer.has_bias else None
    return layer.shared[expert - layer.n_experts].down_proj.bias


def _gate_up(layer: ExpertLayer, x: torch.Tensor, expert: int) -> torch.Tensor:
    experts = layer.experts
    weight = experts.gate_up_proj[expert]
    out = x @ weight if layer.transposed else nn.functional.linear(x, weight)
    if layer.has_bias:
        out = out + experts.gate_up_proj_bias[expert]
    return out


def _gating(layer: ExpertLayer, gate_up: torch.Tensor) -> torch.Tensor:
    experts = layer.experts
    if layer.interface:
        return experts._apply_gate(gate_up) if getattr(experts, "has_gate", True) else experts.act_fn(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)  # Llama4TextExperts
    return up * experts.act_fn(gate)


def expert_activations(layer: ExpertLayer, x: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Neuron activations of routed pairs: ``x [r, d]`` inputs of the experts module (Llama-4: already scaled by
    the router weight), ``experts [r, k]`` → ``h [r, k, f]``, expert by expert."""
    out = x.new_zeros(*experts.shape, layer.width)
    flat = experts.reshape(-1)
    for expert in flat.unique().tolist():
        pairs = (flat == expert).nonzero()[:, 0]
        rows = torch.div(pairs, experts.shape[1], rounding_mode="floor")
        hidden = _gating(layer, _gate_up(layer, x[rows], int(expert)))
        out.view(-1, layer.width)[pairs] = hidden.to(out.dtype)
    return out


def expert_writes(layer: ExpertLayer, delta: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """What changes ``delta [r, k, f]`` of routed pairs' activations add to each pair's expert output (before the
    router weight): ``delta @ value vectors``, ``[r, k, d]`` (differentiable in ``delta``)."""
    flat = experts.reshape(-1)
    d_model = layer.experts.down_proj.shape[2 if layer.transposed else 1]
    if flat.numel() == 0:
        return delta.new_zeros(*experts.shape, d_model)
    rows = delta.reshape(flat.numel(), layer.width)
    pieces, order = [], []
    for expert in flat.unique().tolist():
        pairs = (flat == expert).nonzero()[:, 0]
        vectors = expert_value_vectors(layer, int(expert))  # [f, d]
        pieces.append(rows[pairs].to(vectors.dtype) @ vectors)
        order.append(pairs)
    out = torch.cat(pieces)[torch.cat(order).argsort()]
    return out.view(*experts.shape, -1)


def value_vector(adapter, row: torch.Tensor | tuple[int, ...] | list[int]) -> torch.Tensor:
    """The value vector ``[d_model]`` (a view into the weights) of a neuron row: ``(layer, index)`` of a dense
    model, or ``(layer, expert, index)`` of an MoE model (expert -1 for its dense layers).

    Example:
        >>> value_vector(get_adapter(model), (1, 3, 7))   # column 7 of expert 3's down projection in layer 1
    """
    row = [int(v) for v in (row.tolist() if isinstance(row, torch.Tensor) else row)]
    if len(row) == 2:
        return adapter.value_vectors(row[0])[row[1]]
    layer, expert, index = row
    moe = getattr(adapter, "moe", None)
    if moe is None:
        raise InputError("(layer, expert, index) rows name expert neurons, but this model is dense: use "
                         "(layer, index) rows")
    width = moe.layout.width(layer, expert)
    if not 0 <= index < width:
        raise InputError(f"neuron index {index} is out of range for layer {layer}, expert {expert} (width {width})")
    if expert == DENSE:
        return adapter.value_vectors(layer)[index]
    return expert_value_vectors(moe.layers[layer], expert)[index]


def routed_projection(adapter, layer: int, directions: torch.Tensor) -> torch.Tensor:
    """``⟨w_{e,i}, v_j⟩`` of the routed experts of an MoE layer: ``[E, m, f]`` for directions ``v [m, d]``, in the
    directions' dtype on their device: one batched product over the experts, reading ``down_proj`` once in its
    own layout and dtype (no weight is copied or converted whole)."""
    expert_layer = adapter.moe.layers[layer]
    down = expert_layer.experts.down_proj  # [E, f, d] (transposed) or [E, d, f]
    local = directions.to(down.device, down.dtype)
    routed = local @ (down.transpose(1, 2) if expert_layer.transposed else down)  # [E, m, f]
    return routed.to(directions.device, directions.dtype)


def _projection(vectors: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """``vectors [w, d] @ directions [m, d]ᵀ`` in the vectors' dtype on their device, as ``[w, m]`` in the
    directions' dtype on theirs."""
    return (vectors @ directions.to(vectors.device, vectors.dtype).T).to(directions.device, directions.dtype)


def shared_projections(adapter, layer: int, directions: torch.Tensor) -> list[torch.Tensor]:
    """``⟨w, v_j⟩`` of each shared expert of an MoE layer: ``[f_s, m]`` per shared expert (layout order)."""
    return [_projection(shared.down_proj.weight.t(), directions) for shared in adapter.moe.layers[layer].shared]


def layer_projection(adapter, layer: int, directions: torch.Tensor, centre: bool = False) -> torch.Tensor:
    """``⟨w, v⟩`` for every neuron ``w`` of a layer in layout order (routed experts, then shared experts; a dense
    layer's neurons) and directions ``v [m, d]``: ``[n_l, m]`` in the directions' dtype, on their device.
    ``centre``: ``⟨w − mean(w), v⟩`` (LayerNorm's centring moved onto the value vectors). Computed in the weights'
    dtype on their device (as the dense contribution does), so no weight is copied or converted whole."""
    moe = adapter.moe
    dtype, device = directions.dtype, directions.device
    if not moe.is_moe(layer):
        blocks = [adapter.value_vectors(layer)]
        routed = None
    else:
        expert_layer = moe.layers[layer]
        down = expert_layer.experts.down_proj
        routed = routed_projection(adapter, layer, directions).transpose(1, 2).reshape(-1, directions.shape[0])
        blocks = [shared.down_proj.weight.t() for shared in expert_layer.shared]
    parts = [] if routed is None else [routed]
    parts += [_projection(vectors, directions) for vectors in blocks]
    out = torch.cat(parts)
    if not centre:
        return out
    means = []
    if routed is not None:
        keep = torch.promote_types(down.dtype, torch.float32)
        means.append(down.mean(-1 if expert_layer.transposed else 1, dtype=keep).reshape(-1))
    means += [vectors.to(torch.promote_types(vectors.dtype, torch.float32)).mean(-1) for vectors in blocks]
    return out - torch.cat(means).to(device, dtype)[:, None] * directions.sum(-1)


def unit_biases(adapter, layer: int) -> list[torch.Tensor | None]:
    """The bias ``[d]`` each unit of a layer adds (in layout order), or None per unit without one."""
    moe = adapter.moe
    if not moe.is_moe(layer):
        return [getattr(adapter.module(layer, adapter.family.down), "bias", None)]
    expert_layer = moe.layers[layer]
    return [expert_bias(expert_layer, e) for e in range(expert_layer.n_experts + len(expert_layer.shared))]
