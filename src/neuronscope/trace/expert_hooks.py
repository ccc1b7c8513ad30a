"""Hooks on the stock modules of MoE layers — the router, the fused experts module, the shared experts — that read
routing and expert-neuron activations of routed tokens and change them, during a forward or ``generate``.

No modeling file is patched and transformers' experts implementation (``grouped_mm``, ``batched_mm``, ``eager``)
keeps running unchanged: the experts module's output is the stock one, and a change of expert neurons is added to
it as ``g_e · (h_new − h) @ W_down^e`` for the changed (token, expert) pairs only (Llama-4: without ``g_e``, which
scales its input). Activations ``h`` of routed pairs are read where the stock implementation computes them
(``batched_mm`` / ``grouped_mm`` call the module's gating ``_apply_gate`` on every routed pair: see
:func:`_intercept_gate`), or else (``eager``, Llama-4) recomputed from the module's own weights and gating function
(:func:`neuronscope.models.moe.expert_activations`) for the tokens a handler asks for. So a forward with reading
hooks only is bit for bit the plain forward, and tokens not routed to a changed expert are untouched.

Per MoE layer and forward call: the router hook makes an :class:`ExpertCall` (routing of all ``N = B·T`` tokens,
which router handlers may change), the experts pre-hook adds its input, and the experts hook runs the expert
handlers and adds their changes to the output. Shared experts are plain MLPs: their ``down_proj`` input is hooked
directly (:meth:`ExpertHooks.on_shared`), like a dense site.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from neuronscope.errors import NeuronscopeError
from neuronscope.models.adapter import ModelAdapter
from neuronscope.models.moe import ExpertLayer, expert_activations, expert_writes
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.positions import CallState, Selection


class ExpertCall:
    """One MoE layer in one forward call.

    Attributes:
        moe: the layer; ``call``: the call state (batch ``B``, new positions ``T``, offset).
        logits: ``[N, E]`` router logits (``N = B·T``, row ``b·T + t``); ``weights`` / ``experts``: ``[N, k]`` the
            routing the experts module receives (after router handlers); ``dtype``: the router input's dtype.
        hidden: ``[N, d]`` the experts module's input (Llama-4: ``[E·N, d]``, expert-major, already scaled).
    """

    def __init__(self, moe: ExpertLayer, call: CallState, logits: torch.Tensor, weights: torch.Tensor,
                 experts: torch.Tensor, dtype: torch.dtype):
        self.moe, self.call = moe, call
        self.logits, self.weights, self.experts, self.dtype = logits, weights, experts, dtype
        self.hidden: torch.Tensor | None = None
        self._acts: torch.Tensor | None = None
        self._have: torch.Tensor | None = None
        self._complete = False  # every routed pair's activations are in _acts (no per-row bookkeeping)
        self.source = "recomputed"  # or "intercepted": read from the stock experts implementation
        self._changes: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._writes: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.n_tokens = int(logits.shape[0])
        if self.n_tokens != call.batch * call.seq_len:
            raise NeuronscopeError(f"MoE layer {moe.layer} saw {self.n_tokens} tokens in a call of "
                                   f"{call.batch} x {call.seq_len}: packed (padding-free) batches are not supported")

    # -- rows ------------------------------------------------------------------------------------------------
    def rows(self, selection: Selection, valid_only: bool = True, local: torch.Tensor | None = None) -> torch.Tensor:
        """Token rows ``b·T + t`` of a selection: ``[R]`` of the valid entries (row-major), or ``[B·P]`` of all
        (``valid_only=False``, clamped positions included, for ``[B, P]`` records). ``local``: the selection's
        ``local`` already on the routing's device (saves a host-to-device copy, which makes the host wait)."""
        device = self.experts.device
        local = selection.local.to(device) if local is None else local
        flat = torch.arange(local.shape[0], device=device)[:, None] * self.call.seq_len + local
        return flat[selection.valid.to(device)] if valid_only else flat.reshape(-1)

    def output_weights(self, rows: torch.Tensor) -> torch.Tensor:
        """``g [R, k]``: what multiplies each routed expert's output (1 where the weight scales the input)."""
        weights = self.weights[rows]
        return torch.ones_like(weights) if self.moe.family.weight_on_input else weights

    # -- activations -----------------------------------------------------------------------------------------
    def activations(self, rows: torch.Tensor) -> torch.Tensor:
        """``h [R, k, f]`` of the routed pairs of token rows ``rows`` (computed once per token, detached), with the
        changes earlier handlers of this call made."""
        if self.hidden is None:
            raise NeuronscopeError(f"the experts module of layer {self.moe.layer} did not receive its input")
        if self._acts is None:
            self._acts = self.hidden.new_zeros(self.n_tokens, self.moe.top_k, self.moe.width)
            self._have = torch.zeros(self.n_tokens, dtype=torch.bool, device=self.hidden.device)
        missing = None if self._complete else rows[~self._have[rows]].unique()  # the host waits here: recompute only
        if missing is not None and missing.numel():
            experts = self.experts[missing]
            with torch.no_grad():
                if self.moe.family.weight_on_input:  # Llama-4: expert-major input rows e·N + n, one per pair
                    inputs = self.hidden[(experts * self.n_tokens + missing[:, None]).reshape(-1)]
                    acts = expert_activations(self.moe, inputs, experts.reshape(-1, 1)).view(*experts.shape, -1)
                else:
                    acts = expert_activations(self.moe, self.hidden[missing], experts)
            self._acts[missing] = acts.to(self._acts.dtype)
            self._have[missing] = True
        values = self._acts[rows]
        if self._changes:  # what earlier handlers of this call changed
            changed_rows = torch.cat([r for r, _ in self._changes])
            deltas = torch.cat([d.to(values.dtype) for _, d in self._changes])
            values = values + torch.zeros_like(self._acts).index_add(0, changed_rows, deltas)[rows]
        return values

    def activations_into(self, rows: torch.Tensor, out: torch.Tensor) -> None:
        """:meth:`activations` of ``rows`` written into ``out [R, k, f]`` (one gather kernel when the stock
        implementation gave every activation and nothing changed them)."""
        if self._complete and not self._changes and out.dtype == self._acts.dtype:
            torch.index_select(self._acts, 0, rows, out=out)
        else:
            out.copy_(self.activations(rows))

    def intercepted(self, hidden: torch.Tensor, order: torch.Tensor | None) -> None:
        """Activations of every routed pair as the stock experts implementation computed them: ``hidden [N·k, f]``
        in flat (token, slot) order, or sorted by ``order`` (row ``r`` is flat pair ``order[r]``)."""
        if hidden.shape[0] != self.n_tokens * self.moe.top_k:
            return  # not the layout this reader knows: recompute instead
        hidden = hidden.detach()
        if order is not None:  # one copy kernel: unsorted[order[r]] = hidden[r]
            hidden = torch.empty_like(hidden).index_copy_(0, order.to(hidden.device), hidden)
        self._acts = hidden.view(self.n_tokens, self.moe.top_k, self.moe.width)
        self._complete = True
        self.source = "intercepted"

    def change(self, rows: torch.Tensor, delta: torch.Tensor) -> None:
        """Add ``delta [R, k, f]`` to the activations of the routed pairs of ``rows`` (it may carry gradients)."""
        self._changes.append((rows, delta))

    def add_output(self, rows: torch.Tensor, writes: torch.Tensor) -> None:
        """Add ``writes [R, k, d]`` to the routed pairs' expert outputs (before the router weight), as a change of
        their value vectors would (``a_i · Δw_i``)."""
        self._writes.append((rows, writes))

    def apply(self, output: torch.Tensor) -> torch.Tensor:
        """The experts module's output with the changes' writes added (the output itself when none)."""
        pieces = list(self._writes)
        if self._changes:
            rows = torch.cat([rows for rows, _ in self._changes])
            delta = torch.cat([delta for _, delta in self._changes])
            pieces.append((rows, expert_writes(self.moe, delta, self.experts[rows])))  # [R, k, d]
        for rows, writes in pieces:
            output = self._add(output, rows, writes)
        return output

    def _add(self, output: torch.Tensor, rows: torch.Tensor, writes: torch.Tensor) -> torch.Tensor:
        if self.moe.family.weight_on_input:
            target = (self.experts[rows] * self.n_tokens + rows[:, None]).reshape(-1)
            return output.index_add(0, target, writes.reshape(-1, writes.shape[-1]).to(output.dtype))
        work = torch.promote_types(writes.dtype, torch.float32)
        summed = (writes.to(work) * self.output_weights(rows).to(work)[..., None]).sum(1)
        return output.index_add(0, rows, summed.to(output.dtype))


ExpertHandler = Callable[[ExpertCall], None]
SharedHandler = Callable[[torch.Tensor, CallState], "torch.Tensor | None"]


def read_router(moe: ExpertLayer, output: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits [N, E], weights [N, k], experts [N, k])`` from a stock router's output."""
    if moe.family.routing == "llama4":  # (dense scores [N, E], logits)
        scores, logits = output
        experts = torch.topk(logits, moe.top_k, dim=1)[1]
        return logits, scores.gather(1, experts), experts
    logits, weights, experts = output[0], output[1], output[2]
    return logits, weights, experts


def write_router(moe: ExpertLayer, output: Any, weights: torch.Tensor, experts: torch.Tensor) -> Any:
    """The router's output with the routing replaced (same types and dtypes)."""
    if moe.family.routing == "llama4":
        scores, logits = output
        dense = torch.zeros_like(scores).scatter(1, experts, weights.to(scores.dtype))
        return dense, logits
    return (output[0], weights.to(output[1].dtype), experts.to(output[2].dtype), *output[3:])


class _Dispatcher:
    """The one set of module hooks on a model's MoE layers, shared by every open :class:`ExpertHooks`: captures and
    interventions opened in any order see one routing and one set of activations per layer and call, and their
    handlers run in the order they were added (so a capture added after an intervention sees its changes)."""

    def __init__(self, adapter: ModelAdapter):
        self.adapter = adapter
        self.handlers: dict[tuple, list[tuple[int, Callable]]] = {}
        self.handles: dict[tuple, list[torch.utils.hooks.RemovableHandle]] = {}
        self.watcher: HookSet | None = None
        self.current: dict[int, ExpertCall] = {}

    @property
    def call(self) -> CallState:
        return self.watcher.call

    def _run(self, key: tuple, *args: Any) -> Any:
        return [handler(*args) for _, handler in list(self.handlers.get(key, []))]

    def add(self, key: tuple, owner: int, handler: Callable) -> None:
        if self.watcher is None:
            self.watcher = HookSet(self.adapter)
        install_key = ("layer", key[1]) if key[0] in ("router", "experts") else key
        if install_key not in self.handles:
            self.handles[install_key] = self._install(install_key)
        self.handlers.setdefault(key, []).append((owner, handler))

    def remove_owner(self, owner: int) -> None:
        for key in list(self.handlers):
            self.handlers[key] = [(o, h) for o, h in self.handlers[key] if o != owner]
            if not self.handlers[key]:
                del self.handlers[key]
        for install_key in list(self.handles):
            users = [install_key] if install_key[0] != "layer" else [("router", install_key[1]),
                                                                      ("experts", install_key[1])]
            if not any(key in self.handlers for key in users):
                for handle in self.handles.pop(install_key):
                    handle.remove()
                if install_key[0] == "layer":  # a forward that raised inside the experts leaves no wrapper behind
                    self.adapter.moe.layers[install_key[1]].experts.__dict__.pop("_apply_gate", None)
        if not self.handles and self.watcher is not None:
            self.watcher.remove()
            self.watcher = None
            self.current.clear()

    def _install(self, key: tuple) -> list[torch.utils.hooks.RemovableHandle]:
        moe = self.adapter.moe.layers[key[1]]
        if key[0] == "shared":
            return [moe.shared[key[2]].down_proj.register_forward_pre_hook(self._shared_hook(key))]
        if key[0] == "gate":
            return [moe.shared_gate.register_forward_hook(self._gate_hook(key))]
        return self._layer_hooks(moe)

    def _shared_hook(self, key: tuple):
        def pre_hook(module: nn.Module, args: tuple) -> tuple | None:
            tensor = args[0]
            view = tensor.reshape(self.call.batch, self.call.seq_len, tensor.shape[-1])
            changed = None
            for _, handler in list(self.handlers.get(key, [])):
                new = handler(view if changed is None else changed, self.call)
                changed = changed if new is None else new
            return None if changed is None else (changed.reshape(tensor.shape).to(tensor.dtype), *args[1:])

        return pre_hook

    def _gate_hook(self, key: tuple):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            weight = torch.sigmoid(output.detach()).reshape(self.call.batch, self.call.seq_len, 1)
            self._run(key, weight, self.call)

        return hook

    def _layer_hooks(self, moe: ExpertLayer) -> list[torch.utils.hooks.RemovableHandle]:
        index = moe.layer

        def router_hook(module: nn.Module, args: tuple, output: Any) -> Any:
            logits, weights, experts = read_router(moe, output)
            dtype = args[0].dtype if args and isinstance(args[0], torch.Tensor) else logits.dtype
            state = ExpertCall(moe, self.call, logits.detach(), weights, experts, dtype)
            self.current[index] = state
            self._run(("router", index), state)
            if state.weights is weights and state.experts is experts:
                return None
            return write_router(moe, output, state.weights, state.experts)

        def experts_pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            state = self.current.get(index)
            if state is not None:
                state.hidden = (args[0] if args else kwargs["hidden_states"]).detach()
                if ("experts", index) in self.handlers:
                    _intercept_gate(module, moe, state)

        def experts_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            module.__dict__.pop("_apply_gate", None)
            state = self.current.pop(index, None)
            if state is None:
                return None
            self._run(("experts", index), state)
            new = state.apply(output)
            return None if new is output else new

        return [moe.router.register_forward_hook(router_hook),
                moe.experts.register_forward_pre_hook(experts_pre_hook, with_kwargs=True),
                moe.experts.register_forward_hook(experts_hook)]


#: transformers' experts implementations whose rows reach ``_apply_gate`` in a known order: ``batched_mm`` keeps the
#: flat (token, slot) order ``r = token·k + slot``; ``grouped_mm`` sorts it by expert with ``torch.sort`` (whose
#: permutation the hook recomputes from the same routing tensor: the same call on the same input).
INTERCEPTED = ("batched_mm", "grouped_mm")


def _intercept_gate(module: nn.Module, moe: ExpertLayer, state: ExpertCall) -> None:
    """Read the neuron activations of all routed pairs where the stock experts implementation computes them:
    transformers' experts interface calls ``self._apply_gate(gate_up)`` (the family's gating, gpt-oss's clamped
    one included) on every (token, expert) pair; for the duration of this call the module's own gating runs
    through a wrapper that keeps its output (``ExpertCall.intercepted``) and returns it unchanged, so the forward
    is bit for bit the plain one. Other implementations (``eager``, Llama-4's experts) are recomputed instead."""
    implementation = getattr(getattr(module, "config", None), "_experts_implementation", None)
    if not moe.interface or implementation not in INTERCEPTED or not getattr(module, "has_gate", False):
        return
    order = None if implementation == "batched_mm" else torch.sort(state.experts.reshape(-1))[1]
    original = type(module)._apply_gate.__get__(module)

    def gate(gate_up: torch.Tensor) -> torch.Tensor:
        hidden = original(gate_up)
        state.intercepted(hidden, order)
        return hidden

    module.__dict__["_apply_gate"] = gate


def _dispatcher(adapter: ModelAdapter) -> _Dispatcher:
    dispatcher = getattr(adapter, "_expert_dispatcher", None)
    if dispatcher is None:
        dispatcher = _Dispatcher(adapter)
        adapter._expert_dispatcher = dispatcher
    return dispatcher


class ExpertHooks:
    """Router / experts / shared-expert handlers on the MoE layers of one model; removed on exit (or when the
    :class:`HookSet` they were opened with is removed), also on error.

    Args:
        adapter: the model's adapter (an MoE model).
        hooks: an open :class:`HookSet`; its ``remove()`` removes these handlers too.

    Handlers receive the call state of a decoder watcher shared by all handlers of the model.

    Example:
        >>> with HookSet(adapter) as hooks, ExpertHooks(adapter, hooks) as moe_hooks:
        ...     moe_hooks.on_experts(1, lambda call: print(call.experts.shape))
        ...     model(**batch)
    """

    def __init__(self, adapter: ModelAdapter, hooks: HookSet):
        if adapter.moe is None:
            raise NeuronscopeError(f"'{adapter.model_type}' is not a mixture-of-experts model")
        self.adapter = adapter
        self._dispatcher = _dispatcher(adapter)
        self._removed = False
        hooks._handles.append(self)  # HookSet.remove() calls self.remove()

    def moe_layer(self, layer: int) -> ExpertLayer:
        layer = self.adapter.check_layer(layer)
        if not self.adapter.moe.is_moe(layer):
            raise NeuronscopeError(f"layer {layer} is a dense layer of this model; its neurons are (layer, -1, i)")
        return self.adapter.moe.layers[layer]

    def on_router(self, layer: int, handler: Callable[[ExpertCall], None]) -> None:
        """``handler(call)`` right after the router; it may replace ``call.weights`` / ``call.experts``."""
        self._dispatcher.add(("router", self.moe_layer(layer).layer), id(self), handler)

    def on_experts(self, layer: int, handler: ExpertHandler) -> None:
        """``handler(call)`` after the experts module ran; it reads activations and may :meth:`ExpertCall.change`
        them."""
        self._dispatcher.add(("experts", self.moe_layer(layer).layer), id(self), handler)

    def on_shared(self, layer: int, j: int, handler: SharedHandler) -> None:
        """``handler(acts [B, T, f_j], call)`` on shared expert ``j``'s neurons; a returned tensor replaces them."""
        self._dispatcher.add(("shared", self.moe_layer(layer).layer, j), id(self), handler)

    def on_shared_gate(self, layer: int, j: int, handler: SharedHandler) -> None:
        """``handler(weight [B, T, 1], call)`` with the factor that multiplies shared expert ``j``'s output
        (families with a shared-expert gate only)."""
        moe = self.moe_layer(layer)
        if moe.shared_gate is not None:
            self._dispatcher.add(("gate", moe.layer, j), id(self), handler)

    def remove(self) -> None:
        if not self._removed:
            self._removed = True
            self._dispatcher.remove_owner(id(self))

    def __enter__(self) -> ExpertHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
