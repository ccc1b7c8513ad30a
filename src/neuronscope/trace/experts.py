"""Capture routing and expert-neuron activations of an MoE model at chosen positions, during a forward or
``generate``.

For every MoE layer and selected position: the router's logits ``[E]``, the ``k`` chosen experts, the router
weights, the weight ``g`` that multiplies each chosen expert's output (the router weight; 1 for Llama-4, whose
router weight scales the expert's input instead), the chosen experts' neuron activations ``a [k, f]`` (input of
their down projection), and each shared expert's activations and gate. Dense layers of the model are captured at
today's ``"neuron"`` site.

A layer's output is ``Σ_slots g · (a @ W_down^e + b_e) + Σ_shared gate · a_s @ W_s`` (``b_e``: gpt-oss's expert
biases), so :meth:`MoEActivations.weighted` (``g · a``, zeros for unrouted experts) in the layer's neuron order of
:class:`~neuronscope.models.moe.NeuronLayout` is what each neuron's value vector is multiplied by.

Example:
    >>> with capture_experts(model, positions="all") as acts:
    ...     model(**batch)
    >>> moe = acts.moe(1)
    >>> moe.experts.shape, moe.acts.shape            # [B, T, k], [B, T, k, f]
    >>> acts.weighted(1).shape                        # [B, T, E·f + shared widths]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from neuronscope.errors import NeuronscopeError
from neuronscope.models.adapter import ModelAdapter, get_adapter
from neuronscope.models.moe import expert_scores
from neuronscope.trace.capture import Capture, capture
from neuronscope.trace.expert_hooks import ExpertCall, ExpertHooks
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.positions import CallState, Explicit, PositionSpec, normalise, per_call


@dataclass
class MoEActivations:
    """One MoE layer at the selected positions ``[B, P]``.

    Attributes:
        experts: ``[B, P, k]`` chosen experts; ``router_weights``: ``[B, P, k]`` the router's weights;
        weights: ``[B, P, k]`` ``g``, what multiplies each chosen expert's output; ``acts``: ``[B, P, k, f]``;
        logits: ``[B, P, E]`` router logits (:meth:`probabilities`: the router's scores of all experts; None when
        captured without them);
        ``shared_acts`` / ``shared_weights``: per shared expert ``[B, P, f_s]`` / ``[B, P]``; ``n_experts``: ``E``;
        ``routing``: the family's routing rule.
    """

    layer: int
    n_experts: int
    experts: torch.Tensor
    router_weights: torch.Tensor
    weights: torch.Tensor
    acts: torch.Tensor
    logits: torch.Tensor | None
    shared_acts: list[torch.Tensor]
    shared_weights: list[torch.Tensor]
    routing: str = "softmax_topk"

    def probabilities(self) -> torch.Tensor:
        """``[B, P, E]`` the router's score of every expert (softmax of the logits; sigmoid for sigmoid routers)."""
        return expert_scores(self.routing, self.logits)

    def full(self, weighted: bool = False) -> torch.Tensor:
        """``[B, P, E, f]``: each routed expert's activations (``g · a`` if ``weighted``), zeros where unrouted."""
        values = self.acts * self.weights[..., None].to(self.acts.dtype) if weighted else self.acts
        out = values.new_zeros(*values.shape[:2], self.n_experts, values.shape[-1])
        index = self.experts[..., None].expand_as(values).to(values.device)
        return out.scatter_add(2, index, values)

    def weighted(self) -> torch.Tensor:
        """``[B, P, E·f + Σ f_s]``: ``g · a`` of every neuron of the layer in layout order (routed experts 0..E-1,
        then the shared experts)."""
        parts = [self.full(weighted=True).flatten(2)]
        for acts, weight in zip(self.shared_acts, self.shared_weights, strict=True):
            parts.append(acts * weight[..., None].to(acts.dtype))
        return torch.cat([part.to(parts[0].dtype) for part in parts], dim=-1)


class ExpertCapture(Capture):
    """What :func:`capture_experts` recorded: :meth:`moe` for MoE layers, :meth:`dense` for dense layers,
    :meth:`weighted` for either as the layer's neurons in layout order."""

    def __init__(self, adapter: ModelAdapter, layers: list[int], explicit: Explicit | None):
        moe_layers = [layer for layer in layers if adapter.moe.is_moe(layer)]
        super().__init__(["moe"], moe_layers, explicit, adapter.n_layers)
        self.adapter, self.all_layers = adapter, layers
        self.dense_capture: Capture | None = None
        self.router_logits = True

    def moe(self, layer: int) -> MoEActivations:
        layer = self.adapter.check_layer(layer)
        moe = self.adapter.moe.layers.get(layer)
        if moe is None:
            raise NeuronscopeError(f"layer {layer} is a dense layer: use dense({layer}) or weighted({layer})")
        k = moe.top_k
        acts = self.get("moe.acts", layer)
        shared = [self.get(f"moe.shared{j}", layer) for j in range(len(moe.shared))]
        gates = [self.get(f"moe.gate{j}", layer)[..., 0] if moe.shared_gate is not None
                 else torch.ones(acts.shape[:2], dtype=acts.dtype, device=acts.device) for j in range(len(shared))]
        router_weights = self.get("moe.weights", layer)
        weights = torch.ones_like(router_weights) if moe.family.weight_on_input else router_weights
        return MoEActivations(layer, moe.n_experts, self.get("moe.experts", layer).long(), router_weights, weights,
                              acts.view(*acts.shape[:2], k, moe.width),
                              self.get("moe.logits", layer) if self.router_logits else None, shared, gates,
                              moe.family.routing)

    def dense(self, layer: int) -> torch.Tensor:
        """``[B, P, d_ff]`` activations of a dense layer's neurons."""
        if self.dense_capture is None:
            raise NeuronscopeError("no dense layer was captured")
        return self.dense_capture.get("neuron", layer)

    def weighted(self, layer: int) -> torch.Tensor:
        """``[B, P, n_l]``: the layer's neurons in layout order times what multiplies their value vectors."""
        layer = self.adapter.check_layer(layer)
        return self.moe(layer).weighted() if self.adapter.moe.is_moe(layer) else self.dense(layer)

    def positions(self, site: str = "moe.acts", layer: int | None = None) -> torch.Tensor:
        if layer is not None and not self.adapter.moe.is_moe(self.adapter.check_layer(layer)):
            return self.dense_capture.positions("neuron", layer)
        return super().positions(site, self.layers[0] if layer is None else layer)


def _recorder(result: ExpertCapture, spec, keep_grad: bool, to, router_logits: bool = True):
    selection_on = per_call(spec)  # once per call and device

    def store(key: tuple[str, int], values: torch.Tensor, selection) -> None:
        values = values if keep_grad else values.detach()  # every stored value is a fresh gather: no clone needed
        values = values if to is None else values.to(to)
        if selection.slots is not None:
            result._fill(key, values, selection.valid, selection.slots)
        else:
            result._record(key, values, selection.absolute)

    def experts_handler(call: ExpertCall) -> None:
        selection, local = selection_on(call.call, call.experts.device)
        if selection.empty:
            return
        shape = selection.local.shape
        rows = call.rows(selection, valid_only=False, local=local)
        acts = call.activations(rows).reshape(*shape, -1)  # [B, P, k·f]
        if keep_grad:  # the stored tensor is a leaf the layer's output depends on (leaf - leaf = 0: unchanged)
            acts = acts.detach().requires_grad_(True)
            valid = selection.valid.reshape(-1).to(rows.device)
            pairs = acts.view(-1, call.moe.top_k, call.moe.width)[valid]
            call.change(rows[valid], pairs - pairs.detach())
        layer = call.moe.layer
        store(("moe.acts", layer), acts, selection)
        store(("moe.experts", layer), call.experts[rows].reshape(*shape, -1), selection)
        store(("moe.weights", layer), call.weights[rows].reshape(*shape, -1), selection)
        if router_logits:
            store(("moe.logits", layer), call.logits[rows].reshape(*shape, -1), selection)

    def shared_handler(layer: int, name: str):
        def handler(tensor: torch.Tensor, call: CallState) -> None:
            selection, local = selection_on(call, tensor.device)
            if selection.empty:
                return None
            index = (torch.arange(tensor.shape[0], device=tensor.device)[:, None], local)
            values = tensor[index]
            replaced = None
            if keep_grad and name.startswith("moe.shared"):  # a leaf the expert's output depends on
                values = values.detach().requires_grad_(True)
                valid = selection.valid.to(tensor.device)
                replaced = tensor.index_put((index[0].expand_as(index[1])[valid], index[1][valid]), values[valid])
            store((name, layer), values, selection)
            return replaced

        return handler

    return experts_handler, shared_handler


@contextmanager
def capture_experts(
    model: nn.Module,
    layers: int | Sequence[int] | None = None,
    positions: PositionSpec = "last",
    keep_grad: bool = False,
    to: torch.device | str | None = None,
    router_logits: bool = True,
) -> Iterator[ExpertCapture]:
    """Record routing and expert-neuron activations (and dense layers' neurons) while the block runs the model.

    Args:
        model: a Hugging Face MoE causal LM or MoE vision-language model.
        layers: a layer, a list, or None for all layers (MoE and dense).
        positions: ``"last"`` (default), ``"all"``, ``"prompt"``, ``"generated"`` or explicit positions
            (:mod:`neuronscope.trace.positions`).
        keep_grad: keep the autograd graph: expert activations are leaves the layer output depends on (for
            gradients with respect to them); otherwise values are detached.
        to: move captured values to this device; default: where computed.
        router_logits: also keep the router's logits (default True; ``MoEActivations.logits`` is None without).

    Example:
        >>> with capture_experts(model, layers=[1]) as acts:
        ...     model(**batch)
        >>> acts.moe(1).experts[0, -1]                    # experts chosen at the last position of row 0
    """
    adapter = get_adapter(model)
    if adapter.moe is None:
        raise NeuronscopeError(f"'{adapter.model_type}' is a dense model: use neuronscope.trace.capture")
    layer_list = adapter.resolve_layers(layers)
    spec = normalise(positions)
    result = ExpertCapture(adapter, layer_list, spec if isinstance(spec, Explicit) else None)
    result.router_logits = router_logits
    dense_layers = [layer for layer in layer_list if not adapter.moe.is_moe(layer)]
    with ExitStack() as stack:
        if dense_layers:
            result.dense_capture = stack.enter_context(
                capture(model, "neuron", dense_layers, positions, keep_grad=keep_grad, to=to))
        hooks = stack.enter_context(HookSet(adapter))
        moe_hooks = stack.enter_context(ExpertHooks(adapter, hooks))
        experts_handler, shared_handler = _recorder(result, spec, keep_grad, to, router_logits)
        for layer in result.layers:
            moe_hooks.on_experts(layer, experts_handler)
            for j in range(len(adapter.moe.layers[layer].shared)):
                moe_hooks.on_shared(layer, j, shared_handler(layer, f"moe.shared{j}"))
                if adapter.moe.layers[layer].shared_gate is not None:
                    moe_hooks.on_shared_gate(layer, j, shared_handler(layer, f"moe.gate{j}"))
        yield result
