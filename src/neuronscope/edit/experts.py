"""Value-vector edits of expert neurons: what ``w_{e,i} += Δ_i`` does to a forward, as hooks (for optimised edits,
which learn ``Δ`` before any weight changes).

``ValueVectorEdit`` (:mod:`neuronscope.edit.weights`) takes ``[n, 3]`` (layer, expert, index) rows directly: every
edit kind (erase, noise, token shift, knowledge-neuron, optimised) writes into the fused ``down_proj`` of the expert
(a column view) and reverts bit for bit. This module gives the training-time equivalent: routed experts add
``g_e · a_{e,i} · Δ_i`` to the tokens routed to them, shared experts ``a_i · Δ_i`` before their gate, dense layers
``a_i · Δ_i`` — exactly the change the edit makes once applied.
"""

from __future__ import annotations

import torch

from neuronscope.models.adapter import ModelAdapter
from neuronscope.trace.expert_hooks import ExpertCall, ExpertHooks
from neuronscope.trace.hooks import HookSet


def _routed(rows_of_layer: torch.Tensor, neurons: torch.Tensor, deltas: torch.Tensor):
    """Experts handler adding ``a · Δ`` of the edited neurons of one layer to each routed pair's output."""
    experts, index = neurons[rows_of_layer, 1], neurons[rows_of_layer, 2]

    def handler(call: ExpertCall) -> None:
        rows = torch.arange(call.n_tokens, device=call.experts.device)
        acts = call.activations(rows)  # [N, k, f]
        routed = call.experts[..., None] == experts.to(call.experts.device)  # [N, k, r]
        coefficients = acts[..., index.to(acts.device)] * routed.to(acts.dtype)  # [N, k, r]
        edit = deltas[rows_of_layer.to(deltas.device)]
        work = torch.promote_types(coefficients.dtype, edit.dtype)
        call.add_output(rows, coefficients.to(work) @ edit.to(coefficients.device, work))

    return handler


def expert_delta_hooks(adapter: ModelAdapter, neurons: torch.Tensor, deltas: torch.Tensor) -> list:
    """Hooks that make a forward behave as if ``w_r += deltas[r]`` for each row ``r`` of ``neurons [n, 3]``;
    returns objects with ``remove()``. ``deltas [n, d]`` may require grad (the gradient reaches them)."""
    hooks = HookSet(adapter)
    moe_hooks = ExpertHooks(adapter, hooks)
    dense_rows = []
    for layer in neurons[:, 0].unique().tolist():
        in_layer = neurons[:, 0] == layer
        if not adapter.moe.is_moe(layer):
            dense_rows.append(in_layer.nonzero()[:, 0])
            continue
        moe = adapter.moe.layers[layer]
        routed = (in_layer & (neurons[:, 1] >= 0) & (neurons[:, 1] < moe.n_experts)).nonzero()[:, 0]
        if routed.numel():
            moe_hooks.on_experts(layer, _routed(routed, neurons, deltas))
        for j in range(len(moe.shared)):
            shared = (in_layer & (neurons[:, 1] == moe.shared_id(j))).nonzero()[:, 0]
            if shared.numel():
                def add(module, args, output, shared=shared):
                    acts = args[0][..., neurons[shared, 2].to(args[0].device)]
                    edit = deltas[shared.to(deltas.device)].to(acts.device)
                    work = torch.promote_types(acts.dtype, edit.dtype)
                    return output + (acts.to(work) @ edit.to(work)).to(output.dtype)
                hooks._handles.append(moe.shared[j].down_proj.register_forward_hook(add))
    if dense_rows:
        from neuronscope.edit.optimise import _add_delta_hooks

        rows = torch.cat(dense_rows)
        dense = neurons[rows][:, [0, 2]]
        hooks._handles.extend(_add_delta_hooks(adapter, dense, deltas[rows.to(deltas.device)]))
    return [hooks]
