"""Integrated gradients and gradient × activation of the neurons of a mixture-of-experts model.

Both scale neurons multiplicatively: at the scored position the layer's neurons ``a`` (routed experts' of the
token's experts, shared experts', or a dense layer's) become ``λ ⊙ a`` with an autograd leaf ``λ [n_l]`` in the
layout order of :class:`~neuronscope.models.moe.NeuronLayout`. Then ``∂P/∂λ_i = a_i · ∂P/∂a_i``, so

- integrated gradients (Dai et al.; :mod:`neuronscope.attribute.integrated_gradients`):
  ``NA_i = a_i · (1/m) Σ_k ∂P(y | a_l ← α_k a_l)/∂a_i = (1/m) Σ_k ∂P/∂λ_i`` at ``λ = α_k``, the routing of the
  scaled layer unchanged (it depends on the layer's input only; later layers route as the model does); the packed
  path (prefix KV cache, one layer at a time) and the plain path of the dense method are reused as they are;
- gradient × activation: ``a_i · ∂log P(y)/∂a_i = ∂log P/∂λ_i`` at ``λ = 1``, all layers in one forward.

Unrouted experts' neurons get 0 (they do not reach the output). Text inputs for IG; GxA takes any batch.

Example:
    >>> ig = moe_integrated_gradients(model, batch, targets, steps=20)       # ExpertNeuronScores
    >>> gxa = moe_gradient_x_activation(model, batch, targets)
"""

from __future__ import annotations

import torch
from torch import nn

from neuronscope.attribute.ig_paths import _check_text_inputs, _example, _ig_packed, _ig_plain, _work_dtype
from neuronscope.attribute.integrated_gradients import METHODS, alpha_grid
from neuronscope.attribute.moe_contribution import sub_layout
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models.adapter import ModelAdapter, get_adapter
from neuronscope.results.expert_scores import ExpertNeuronScores
from neuronscope.trace.expert_hooks import ExpertCall, ExpertHooks
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.positions import CallState
from neuronscope.trace.sites import resolve_site


class ExpertRowScaler:
    """The interface of the dense IG's row scaler (``start`` / ``stop`` / ``leaves`` / ``activations``) for MoE
    models: while a plan ``{layer: (rows [r], scales [r])}`` runs, layer ``layer``'s neurons at ``position`` (None:
    each call's last position; an int; or ``[r]`` one per row) of batch rows ``rows`` are multiplied by the leaves
    ``leaves[layer] [r, n_l]`` (initialised to the scales). ``activations[layer]`` are ones, so that the dense
    IG's ``activations · Σ grads / m`` is ``Σ ∂P/∂λ / m``."""

    def __init__(self, adapter: ModelAdapter, layers: list[int]):
        self.adapter, self.layers = adapter, layers
        self.layout = sub_layout(adapter, layers)
        self.plan: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.position: int | torch.Tensor | None = None
        self.leaves: dict[int, torch.Tensor] = {}
        self.activations: dict[int, torch.Tensor] = {}

    def start(self, plan: dict[int, tuple[torch.Tensor, torch.Tensor]], position=None) -> None:
        self.plan, self.position, self.leaves, self.activations = plan, position, {}, {}
        for layer, (rows, scales) in plan.items():
            width = self.layout.layer_block(layer).stop - self.layout.layer_block(layer).start
            device = self.adapter.device_of(layer)
            dtype = next(getattr(self.adapter.layers[layer], self.adapter.moe.family.block).parameters()).dtype
            leaf = scales.to(device, dtype)[:, None].expand(-1, width).clone().requires_grad_(True)
            self.leaves[layer] = leaf
            self.activations[layer] = torch.ones(len(rows), width, dtype=dtype, device=device)

    def stop(self) -> None:
        self.plan = {}

    def _rows_positions(self, layer: int, call: CallState, device: torch.device):
        rows = self.plan[layer][0].to(device)
        if self.position is None:
            positions = torch.full_like(rows, call.seq_len - 1)
        elif isinstance(self.position, int):
            positions = torch.full_like(rows, self.position)
        else:
            positions = self.position.to(device)
        return rows, positions

    def install(self, hooks: HookSet, moe_hooks: ExpertHooks) -> None:
        """Add this scaler's handlers for its layers (MoE: experts and shared experts; dense: the neuron site)."""
        moe = self.adapter.moe
        for layer in self.layers:
            if not moe.is_moe(layer):
                hooks.add(resolve_site(self.adapter, "neuron", layer), self._site_handler(layer, 0))
                continue
            expert_layer = moe.layers[layer]
            moe_hooks.on_experts(layer, self._experts_handler(layer))
            offset = expert_layer.n_experts * expert_layer.width
            for j, width in enumerate(expert_layer.shared_widths):
                moe_hooks.on_shared(layer, j, self._site_handler(layer, offset, width))
                offset += width

    def _experts_handler(self, layer: int):
        def handler(call: ExpertCall) -> None:
            if layer not in self.plan:
                return
            rows, positions = self._rows_positions(layer, call.call, call.experts.device)
            tokens = rows * call.call.seq_len + positions
            moe = call.moe
            leaf = self.leaves[layer][:, : moe.n_experts * moe.width].reshape(-1, moe.n_experts, moe.width)
            picked = leaf[torch.arange(len(rows), device=leaf.device)[:, None], call.experts[tokens].to(leaf.device)]
            acts = call.activations(tokens)
            call.change(tokens, acts * (picked.to(acts.dtype) - 1))

        return handler

    def _site_handler(self, layer: int, offset: int, width: int | None = None):
        def handler(tensor: torch.Tensor, call: CallState) -> torch.Tensor | None:
            if layer not in self.plan:
                return None
            rows, positions = self._rows_positions(layer, call, tensor.device)
            stop = offset + (width or tensor.shape[-1])
            scale = self.leaves[layer][:, offset:stop].to(tensor.dtype)
            picked = tensor[rows, positions]
            return tensor.index_put((rows, positions), picked * (scale - 1), accumulate=True)

        return handler


def _model_dtype(model: nn.Module) -> torch.dtype:
    return _work_dtype(next(model.parameters()).dtype)


def moe_integrated_gradients(
    model: nn.Module,
    batch: Batch,
    targets: TargetSet,
    *,
    steps: int = 20,
    grid: str = "dai",
    layers: list[int] | None = None,
    batch_size: int | None = None,
    method: str = "packed",
) -> ExpertNeuronScores:
    """Knowledge-neuron integrated gradients of every neuron of an MoE model's chosen layers, for each target.

    Args: as :func:`neuronscope.attribute.integrated_gradients` (``batch_size``: step rows per forward, default 64
        on a CPU and all steps on a GPU; each layer is run on its own).

    Returns:
        :class:`ExpertNeuronScores` ``[examples, targets, neurons]`` (float32, float64 for float64 models).

    Example:
        >>> scores = moe_integrated_gradients(model, batch, token_targets(batch, [5, 9]), steps=20)
    """
    alphas = alpha_grid(steps, grid)
    if method not in METHODS:
        raise NeuronscopeError(f"unknown integrated_gradients method '{method}': use 'packed' or 'plain'")
    on_gpu = next(model.parameters()).device.type == "cuda"
    batch_size = batch_size or (steps if on_gpu else 64)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise NeuronscopeError(f"batch_size must be a positive number of rows, got {batch_size!r}")
    _check_text_inputs(batch)
    adapter = get_adapter(model)
    layer_list = adapter.resolve_layers(layers)
    targets.check(batch.seq_len, adapter.vocab_size)
    scaler = ExpertRowScaler(adapter, layer_list)
    if method == "packed" and "linear_attention" in (getattr(adapter.text_config, "layer_types", None) or []):
        method = "plain"  # hybrid linear-attention caches (Qwen3.5-MoE) cannot be expanded over rows; same scores
    path = _ig_packed if method == "packed" else _ig_plain
    scores = torch.zeros(len(batch), targets.n_targets, scaler.layout.n_neurons, dtype=_model_dtype(model))
    embed_device = model.get_input_embeddings().weight.device
    with HookSet(adapter) as hooks:
        scaler.install(hooks, ExpertHooks(adapter, hooks))
        for row, column in targets.valid.nonzero().tolist():
            ids, positions, scored = _example(batch, row, int(targets.positions[row, column]))
            token = int(targets.token_ids[row, column])
            for layer in layer_list:
                na = path(model, scaler, ids.to(embed_device), positions.to(embed_device), scored, token, [layer],
                          alphas, batch_size)  # [1, n_l]
                scores[row, column, scaler.layout.layer_block(layer)] = na[0].to(scores.dtype)
    meta = {"method": "integrated_gradients", "site": "neuron", "layers": layer_list, "steps": steps, "grid": grid,
            "path": method, "targets": targets.describe(), "model": adapter.describe()}
    return ExpertNeuronScores(scores, scaler.layout, meta=meta)


def moe_gradient_x_activation(
    model: nn.Module,
    batch: Batch,
    targets: TargetSet,
    *,
    layers: list[int] | None = None,
) -> ExpertNeuronScores:
    """``a_i · ∂log P(y)/∂a_i`` of every neuron of an MoE model at each target's position: one forward, one
    backward per target column.

    Example:
        >>> scores = moe_gradient_x_activation(model, batch, targets)
        >>> scores.top_table(10)
    """
    adapter = get_adapter(model)
    layer_list = adapter.resolve_layers(layers)
    targets.check(batch.seq_len, adapter.vocab_size)
    positions = torch.where(targets.valid, targets.positions, torch.full_like(targets.positions, batch.seq_len - 1))
    n_rows, n_targets = positions.shape
    rows = torch.arange(n_rows)[:, None].expand(-1, n_targets).reshape(-1)
    scaler = ExpertRowScaler(adapter, layer_list)
    with HookSet(adapter) as hooks:
        scaler.install(hooks, ExpertHooks(adapter, hooks))
        scaler.start({layer: (rows, torch.ones(len(rows))) for layer in layer_list}, position=positions.reshape(-1))
        try:
            with torch.enable_grad():
                logits = model(**batch.inputs).logits
        finally:
            scaler.stop()
    leaves = [scaler.leaves[layer] for layer in layer_list]
    scores = torch.zeros(n_rows, n_targets, scaler.layout.n_neurons, dtype=_model_dtype(model))
    picked_rows = torch.arange(n_rows, device=logits.device)
    for column in range(n_targets):
        valid = targets.valid[:, column]
        if not bool(valid.any()):
            continue
        picked = logits[picked_rows, positions[:, column].to(logits.device)]
        log_p = picked.to(_work_dtype(picked.dtype)).log_softmax(-1)[picked_rows, targets.token_ids[:, column]
                                                                     .to(logits.device)]
        total = (log_p * valid.to(log_p.device, log_p.dtype)).sum()
        grads = torch.autograd.grad(total, leaves, retain_graph=column < n_targets - 1)
        for layer, grad in zip(layer_list, grads, strict=True):
            own = grad.view(n_rows, n_targets, -1)[:, column]  # each row's own leaf at this target's position
            scores[:, column, scaler.layout.layer_block(layer)] = own.to(scores.dtype).cpu()
    scores = scores * targets.valid[..., None]
    meta = {"method": "gradient_x_activation", "site": "neuron", "layers": layer_list,
            "targets": targets.describe(), "model": adapter.describe()}
    return ExpertNeuronScores(scores, scaler.layout, meta=meta)
