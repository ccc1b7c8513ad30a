"""Interventions on MoE models: change expert neurons (suppress, amplify, set, add, patch) for the tokens routed to
their expert, drop an expert for chosen tokens (``"zero"``: its output weight set to 0; ``"reroute"``: the router
picks its next choice instead, weights by the family's own rule), or force a routing.

Neuron rows are ``(layer, expert, index)`` (:mod:`neuronscope.results.neuron_layout`): routed experts change only for
tokens routed to them (an unrouted expert's neurons do not reach the output), shared experts for every selected
token, ``expert = -1`` rows (dense layers) become today's :class:`~neuronscope.trace.intervene.Intervention`.
``neuronscope.trace.suppress`` / ``amplify`` / ``set_neurons`` / ``patch_neurons`` accept such rows and
``intervene`` applies them.

Example:
    >>> rows = torch.tensor([[1, 3, 7], [1, 4, 0]])          # (layer, expert, index)
    >>> with intervene(model, suppress(rows, positions="all") + [drop_expert(1, 2, mode="reroute")]):
    ...     out = model.generate(**batch, max_new_tokens=5)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from neuronscope.errors import InputError, NeuronscopeError
from neuronscope.models.adapter import ModelAdapter
from neuronscope.models.devices import on_device
from neuronscope.models.moe import DENSE, route
from neuronscope.trace.expert_hooks import ExpertCall, ExpertHooks
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.intervene import Intervention, _apply, _Placed, check_change
from neuronscope.trace.positions import PositionSpec, normalise, select

DROP_MODES = ("zero", "reroute")


@dataclass(frozen=True)
class ExpertIntervention:
    """A change of some neurons of one expert of one MoE layer (see the module docstring).

    Attributes:
        layer, expert: the MoE layer and the expert id (routed ``0..E-1`` or shared ``E..``).
        op: ``"set"``, ``"scale"``, ``"add"`` or ``"patch"`` (as :class:`~neuronscope.trace.Intervention`).
        value: a number, ``[n]`` (one per neuron), or ``[batch, P, n]`` aligned with the selected positions.
        neurons: indices inside the expert ``[n]``; None = all its neurons.
        positions: a position spec (default ``"last"``).
    """

    layer: int
    expert: int
    op: str
    value: float | torch.Tensor
    neurons: torch.Tensor | None = None
    positions: PositionSpec = "last"

    def __post_init__(self) -> None:
        check_change(self.op, self.value)


@dataclass(frozen=True)
class RoutingIntervention:
    """A change of routing in one MoE layer at the selected positions.

    Attributes:
        layer: the MoE layer.
        kind: ``"zero"`` (drop ``experts`` by zeroing their weight), ``"reroute"`` (drop them: the router's next
            choices replace them) or ``"force"`` (route to exactly ``experts``, ``k`` of them).
        experts: the dropped or forced expert ids.
        weights: ``"force"`` only: one weight per forced expert; default: the family's own weights for them.
        positions: a position spec (default ``"all"``).
    """

    layer: int
    kind: str
    experts: tuple[int, ...]
    weights: tuple[float, ...] | None = None
    positions: PositionSpec = "all"

    def __post_init__(self) -> None:
        if self.kind not in (*DROP_MODES, "force"):
            raise InputError(f"unknown routing change '{self.kind}': use 'zero', 'reroute' or 'force'")
        if not self.experts:
            raise InputError("name at least one expert to drop or to route to")
        if self.weights is not None and (self.kind != "force" or len(self.weights) != len(self.experts)):
            raise InputError("weights are given only to 'force', one per forced expert")


def drop_expert(layer: int, experts: int | Sequence[int], positions: PositionSpec = "all",
                mode: str = "zero") -> RoutingIntervention:
    """Drop expert(s) of an MoE layer for the tokens at ``positions`` routed to them: ``mode="zero"`` removes
    their output (weight 0, the other experts' weights unchanged), ``mode="reroute"`` sends those tokens to the
    router's next choice instead (weights recomputed by the family's rule)."""
    if mode not in DROP_MODES:
        raise InputError(f"drop mode must be one of {', '.join(DROP_MODES)}, got {mode!r}")
    experts = (experts,) if isinstance(experts, int) else tuple(int(e) for e in experts)
    return RoutingIntervention(int(layer), mode, experts, None, positions)


def force_routing(layer: int, experts: Sequence[int], positions: PositionSpec = "all",
                  weights: Sequence[float] | None = None) -> RoutingIntervention:
    """Route the tokens at ``positions`` of an MoE layer to exactly ``experts`` (``k`` of them), with the family's
    weights for them or the given ``weights``."""
    return RoutingIntervention(int(layer), "force", tuple(int(e) for e in experts),
                               None if weights is None else tuple(float(w) for w in weights), positions)


def expert_neuron_interventions(neurons: torch.Tensor, op: str, value: float | torch.Tensor,
                                positions: PositionSpec = "last") -> list[Intervention | ExpertIntervention]:
    """Interventions for rows ``[n, 3]`` (layer, expert, index): one per (layer, expert); dense rows (expert -1)
    become :class:`Intervention` at the ``"neuron"`` site. ``value``: a number, ``[n]`` in the rows' order, or for
    ``"patch"`` ``[batch, P, n]``."""
    neurons = torch.as_tensor(neurons, dtype=torch.long)
    if neurons.dim() != 2 or neurons.shape[1] != 3:
        raise InputError(f"expert neurons must be [n, 3] (layer, expert, index) rows, got {tuple(neurons.shape)}")
    out: list[Intervention | ExpertIntervention] = []
    for layer, expert in neurons[:, :2].unique(dim=0).tolist():
        rows = ((neurons[:, 0] == layer) & (neurons[:, 1] == expert)).nonzero()[:, 0]
        item_value = value
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            item_value = value[..., rows]
        if expert == DENSE:
            out.append(Intervention("neuron", layer, op, item_value, neurons[rows, 2], positions))
        else:
            out.append(ExpertIntervention(layer, expert, op, item_value, neurons[rows, 2], positions))
    return out


# -- installing ----------------------------------------------------------------------------------------------------
def _new_values(current: torch.Tensor, item: ExpertIntervention, value: torch.Tensor | float) -> torch.Tensor:
    if item.op in ("set", "patch"):
        return torch.broadcast_to(torch.as_tensor(value, dtype=current.dtype, device=current.device), current.shape)
    if item.op == "scale":
        return current * value
    return current + value


def _layer_value(item: ExpertIntervention, rows_b: torch.Tensor, cols: torch.Tensor, device, dtype):
    value = item.value
    if not isinstance(value, torch.Tensor):
        return value
    value = value.to(device=device, dtype=dtype)
    if value.dim() == 3:
        return value[rows_b, cols]
    return value[rows_b] if value.dim() == 2 else value


def _routed_handler(items: list[ExpertIntervention], width: int):
    """The experts-hook handler applying ``items`` (all of one layer) in order, as one change."""

    def handler(call: ExpertCall) -> None:
        plans = []
        for item in items:
            selection = select(normalise(item.positions), call.call)
            if selection.empty:
                continue
            rows_b, cols = selection.valid.nonzero(as_tuple=True)
            plans.append((item, call.rows(selection), rows_b, cols))
        if not plans:
            return
        union = torch.cat([rows for _, rows, _, _ in plans]).unique()
        base = call.activations(union)
        new = base
        for item, rows, rows_b, cols in plans:
            where = torch.searchsorted(union, rows)
            routed = call.experts[rows] == item.expert  # [R, k]
            pair_row, pair_slot = routed.nonzero(as_tuple=True)
            if pair_row.numel() == 0:
                continue
            coords = (torch.arange(width, device=base.device) if item.neurons is None
                      else on_device(item.neurons, base.device))
            token, slot = where[pair_row], pair_slot
            current = new[token[:, None], slot[:, None], coords[None, :]]
            placed = on_device(torch.stack([rows_b, cols]), base.device)  # one pinned copy, no host wait
            value = _layer_value(item, placed[0][pair_row], placed[1][pair_row], base.device, base.dtype)
            new = new.index_put((token[:, None], slot[:, None], coords[None, :]), _new_values(current, item, value))
        if new is not base:
            call.change(union, new - base)

    return handler


def _routing_handler(items: list[RoutingIntervention]):
    def handler(call: ExpertCall) -> None:
        moe = call.moe
        for item in items:
            selection = select(normalise(item.positions), call.call)
            if selection.empty:
                continue
            rows = call.rows(selection).unique()
            chosen = on_device(torch.tensor(item.experts), call.experts.device)
            if item.kind != "force":
                rows = rows[torch.isin(call.experts[rows], chosen).any(-1)]
            if rows.numel() == 0:
                continue
            weights, experts = call.weights.clone(), call.experts.clone()
            if item.kind == "zero":
                hit = torch.isin(experts[rows], chosen)
                weights[rows] = weights[rows].masked_fill(hit, 0.0)
            else:
                allowed = torch.ones(rows.numel(), moe.n_experts, dtype=torch.bool, device=call.logits.device)
                allowed[:, chosen.to(allowed.device)] = False
                if item.kind == "force":
                    allowed = ~allowed
                new_weights, new_experts = route(moe.family.routing, moe.router, call.logits[rows], allowed,
                                                 call.dtype, keep_groups=item.kind != "force")
                if item.weights is not None:
                    table = torch.zeros(moe.n_experts, dtype=new_weights.dtype, device=new_weights.device)
                    table[chosen.to(table.device)] = torch.tensor(item.weights, dtype=table.dtype,
                                                                  device=table.device)
                    new_weights = table[new_experts]
                weights[rows] = new_weights.to(weights.dtype)
                experts[rows] = new_experts.to(experts.dtype)
            call.weights, call.experts = weights, experts

    return handler


def _check(adapter: ModelAdapter, item: ExpertIntervention | RoutingIntervention) -> int:
    layer = adapter.check_layer(item.layer)
    moe = adapter.moe.layers.get(layer) if adapter.moe is not None else None
    if moe is None:
        raise InputError(f"layer {layer} is not a mixture-of-experts layer: expert interventions need one")
    experts = (item.expert,) if isinstance(item, ExpertIntervention) else item.experts
    limit = moe.n_experts + (len(moe.shared) if isinstance(item, ExpertIntervention) else 0)
    bad = [e for e in experts if not 0 <= e < limit]
    if bad:
        raise InputError(f"layer {layer} has experts 0..{moe.n_experts - 1}" +
                         (f" and shared {moe.n_experts}..{limit - 1}" if limit > moe.n_experts else "") +
                         f"; got {bad}")
    if isinstance(item, RoutingIntervention) and item.kind == "force" and len(set(experts)) != moe.top_k:
        raise InputError(f"force a routing to exactly top_k = {moe.top_k} distinct experts of layer {layer}")
    if isinstance(item, ExpertIntervention) and item.neurons is not None:
        width = moe.width if item.expert < moe.n_experts else moe.shared_widths[item.expert - moe.n_experts]
        if item.neurons.numel() and (int(item.neurons.max()) >= width or int(item.neurons.min()) < 0):
            raise InputError(f"neuron index out of range for layer {layer}, expert {item.expert}: width {width}")
    normalise(item.positions)
    return layer


def install_experts(hooks: HookSet, adapter: ModelAdapter,
                    items: Sequence[ExpertIntervention | RoutingIntervention]) -> ExpertHooks:
    """Install ``items`` on an open :class:`HookSet`; returns the :class:`ExpertHooks` to remove with it."""
    if adapter.moe is None:
        raise NeuronscopeError(f"'{adapter.model_type}' is a dense model: expert interventions need an MoE model")
    moe_hooks = ExpertHooks(adapter, hooks)
    routed: dict[int, list[ExpertIntervention]] = {}
    routing: dict[int, list[RoutingIntervention]] = {}
    for item in items:
        layer = _check(adapter, item)
        moe = adapter.moe.layers[layer]
        if isinstance(item, RoutingIntervention):
            routing.setdefault(layer, []).append(item)
        elif item.expert < moe.n_experts:
            routed.setdefault(layer, []).append(item)
        else:
            dense = Intervention("neuron", layer, item.op, item.value, item.neurons, item.positions)
            index = None if item.neurons is None else torch.as_tensor(item.neurons).reshape(-1).cpu()
            moe_hooks.on_shared(layer, item.expert - moe.n_experts,
                                lambda tensor, call, placed=_Placed(dense, index): _apply(tensor, placed, call))
    for layer, layer_items in routing.items():
        moe_hooks.on_router(layer, _routing_handler(layer_items))
    for layer, layer_items in routed.items():
        moe_hooks.on_experts(layer, _routed_handler(layer_items, adapter.moe.layers[layer].width))
    return moe_hooks
