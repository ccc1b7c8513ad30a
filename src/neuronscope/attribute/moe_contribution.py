"""Contribution scores of the neurons of a mixture-of-experts model (Pan et al.'s score with the router weight the
model actually applies):

``s[l, e, i] = g_e(x) · a_{e,i} · ⟨w_{e,i}, u_t⟩``

at the position that produces target ``t``: ``g_e`` is the weight that multiplies expert ``e``'s output after the
family's top-k renormalisation and ``routed_scaling_factor`` (0 for unrouted experts, so their neurons score 0;
Llama-4 scales the expert's *input* by the router weight instead, so ``g = 1`` there and ``a`` already holds it);
shared experts use their gate (Qwen2/3.5-MoE's sigmoid, 1 elsewhere); dense layers keep ``a_i · ⟨w_i, u_t⟩``. What
belongs to no neuron — gpt-oss's expert biases times ``g_e``, output-projection biases — is in ``bias``, so per
layer ``Σ neurons + Σ bias = ⟨MoE block output, u_t⟩`` exactly. ``final_norm=True`` scales by the final norm frozen
at that position (``⟨w, g_f ⊙ u_t⟩ / σ``, LayerNorm's centring included), as the dense score does.

Example:
    >>> scores = moe_contribution(model, batch, word_targets(tokenizer, batch, "Paris"))
    >>> scores.top_table(10)            # layer, expert, kind, neuron, score
    >>> scores.unit_scores()            # each expert's total contribution to each target
"""

from __future__ import annotations

from contextlib import ExitStack

import torch
from torch import nn

from neuronscope.attribute import moe_stacked
from neuronscope.attribute.contribution import score_dtype
from neuronscope.attribute.selection import to_host
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models.adapter import ModelAdapter, get_adapter
from neuronscope.models.devices import on_device
from neuronscope.models.moe import DENSE, NeuronLayout
from neuronscope.models.moe.weights import (
    layer_projection,
    routed_projection,
    shared_projections,
    unit_biases,
)
from neuronscope.results.expert_scores import ExpertNeuronScores
from neuronscope.trace import capture
from neuronscope.trace.experts import ExpertCapture, MoEActivations, capture_experts
from neuronscope.trace.hooks import HookSet


def sub_layout(adapter: ModelAdapter, layers: list[int]) -> NeuronLayout:
    """The model's neuron layout restricted to ``layers`` (flat ids renumbered from 0); built once per adapter and
    layer list (a fact of the architecture: a scoring call does not pay for it again)."""
    cache = adapter.__dict__.setdefault("_sub_layouts", {})
    key = tuple(layers)
    if key not in cache:
        wanted = set(layers)
        units = [tuple(row[:3]) for row in adapter.moe.layout.units.tolist() if row[0] in wanted]
        n_routed = {k: v for k, v in adapter.moe.layout.n_routed.items() if k in wanted}
        layout = NeuronLayout.from_units(units, n_routed)
        cache[key] = (layout, {layer: layout.layer_block(layer) for layer in layers})
    return cache[key][0]


def layer_blocks(adapter: ModelAdapter, layers: list[int]) -> dict[int, slice]:
    """Each layer's slice of :func:`sub_layout`'s flat ids."""
    sub_layout(adapter, layers)
    return adapter.__dict__["_sub_layouts"][tuple(layers)][1]


def unit_coefficients(adapter: ModelAdapter, acts: ExpertCapture, layer: int) -> torch.Tensor:
    """``[B, P, units_l]``: what multiplies each unit's bias — ``Σ_slots g`` of each routed expert, each shared
    expert's gate, 1 for a dense layer."""
    if not adapter.moe.is_moe(layer):
        dense = acts.dense(layer)
        return dense.new_ones(*dense.shape[:2], 1)
    routing = acts.moe(layer)
    g = routing.weights.to(routing.acts.dtype)
    routed = g.new_zeros(*g.shape[:2], routing.n_experts).scatter_add(2, routing.experts.to(g.device), g)
    return torch.cat([routed, *[w[..., None].to(g) for w in routing.shared_weights]], dim=-1)


def _routed_scores(adapter: ModelAdapter, routing: MoEActivations, directions: torch.Tensor,
                   target_index: torch.Tensor, block: torch.Tensor) -> None:
    """Write one MoE layer's scores into ``block [B, n, n_l]`` (zeros on entry): ``g · a · ⟨w, u_t⟩`` of the ``k``
    routed experts' neurons of each (row, target), gathered and scattered to their experts' columns (the
    unrouted ones stay 0, and no ``[B, n, E, f]`` activation grid is built), then each shared expert's block."""
    dtype = block.dtype
    n_experts, width = routing.n_experts, routing.acts.shape[-1]
    routed = routed_projection(adapter, routing.layer, directions)  # [E, m, f]
    rows = routing.experts.shape[0] * routing.experts.shape[1]
    grid = block[..., :n_experts * width].view(rows, 1, n_experts, width)  # block is B·n rows of the scores
    moe_stacked.scatter_routed(routing.acts.to(block.device).reshape(1, rows, -1, width),
                               routing.weights.to(block.device).reshape(1, rows, -1),
                               routing.experts.to(block.device).reshape(1, rows, -1), routed[None],
                               target_index.reshape(-1), grid)
    offset = n_experts * width
    for acts, gate, proj in zip(routing.shared_acts, routing.shared_weights,
                                shared_projections(adapter, routing.layer, directions), strict=True):
        weighted = acts.to(block.device, dtype) * gate[..., None].to(block.device, dtype)
        block[..., offset:offset + acts.shape[-1]] = weighted * proj.T[target_index]
        offset += acts.shape[-1]


def scores_from_capture(
    adapter: ModelAdapter, acts: ExpertCapture, token_ids: torch.Tensor, layers: list[int],
    final_residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, NeuronLayout]:
    """Contribution scores ``[B, n, N]`` of a capture at the targets' positions (``[B, n]`` positions), the bias
    terms ``[B, n, U]`` (None when no unit has a bias) and the layout of the ``N`` neurons / ``U`` units."""
    layout = sub_layout(adapter, layers)
    first = acts.weighted(layers[0])
    dtype, device = score_dtype(first), first.device
    directions, target_index = target_directions(adapter, token_ids, final_residual is not None, device, dtype)
    centre = final_residual is not None and adapter.final_norm().kind == "layer"
    target_index = target_index.to(device)
    scores = torch.zeros(*first.shape[:2], layout.n_neurons, dtype=dtype, device=device)
    bias = torch.zeros(*first.shape[:2], len(layout.units), dtype=dtype, device=device)
    has_bias = False
    blocks = layer_blocks(adapter, layers)
    for layer in layers:
        block = scores[..., blocks[layer]]  # [B, n, n_l] view
        if adapter.moe.is_moe(layer) and not centre:
            _routed_scores(adapter, acts.moe(layer), directions, target_index, block)
        else:
            weighted = acts.weighted(layer).to(device, dtype)  # [B, n, n_l]
            proj = layer_projection(adapter, layer, directions, centre=centre)  # [n_l, m]
            block.copy_(weighted * proj.T[target_index])
        biases = unit_biases(adapter, layer)
        if any(b is not None for b in biases):
            has_bias = True
            vectors = torch.stack([torch.zeros(adapter.d_model, device=device, dtype=dtype) if b is None
                                   else b.detach().to(device, dtype) for b in biases])  # [U_l, d]
            if centre:
                vectors = vectors - vectors.mean(-1, keepdim=True)
            per_target = (vectors @ directions.T).T[target_index]  # [B, n, U_l]
            start = layout.unit_index(layer, DENSE if not adapter.moe.is_moe(layer) else 0)
            coefficients = unit_coefficients(adapter, acts, layer).to(device, dtype)
            bias[..., start:start + len(biases)] = coefficients * per_target
    if final_residual is not None:
        sigma = adapter.final_norm().scale(final_residual.to(device, dtype))  # [B, n, 1]
        scores, bias = scores / sigma, bias / sigma
    return scores, (bias if has_bias else None), layout


def target_directions(adapter: ModelAdapter, token_ids: torch.Tensor, final_norm: bool, device: torch.device,
                      dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(directions [m, d], target_index)``: the distinct targets' unembedding rows (times the final norm's gain
    when ``final_norm``) in ``dtype`` on ``device``, and which of them each ``token_ids`` entry is."""
    unique, target_index = token_ids.unique(return_inverse=True)
    directions = adapter.unembedding()[unique.to(adapter.unembedding().device)].to(device, dtype)
    if final_norm:
        directions = directions * adapter.final_norm().gain.to(device, dtype)
    return directions, target_index


def _stacked(adapter: ModelAdapter, layers: list[int], positions: torch.Tensor, targets: TargetSet,
             final_norm: bool, device: torch.device) -> moe_stacked.StackedExperts:
    """The stacked scorer with :func:`scores_from_capture`'s directions."""
    dtype = score_dtype(adapter.moe.layers[layers[0]].experts.down_proj)
    directions, target_index = target_directions(adapter, targets.token_ids, final_norm, device, dtype)
    return moe_stacked.StackedExperts(adapter, layers, positions, directions, target_index)


@torch.no_grad()
def moe_contribution(
    model: nn.Module,
    batch: Batch,
    targets: TargetSet,
    *,
    layers: list[int] | None = None,
    final_norm: bool = False,
    site: str = "neuron",
    top_k: int | None = None,
    absolute: bool = False,
) -> ExpertNeuronScores:
    """Score every neuron of an MoE model (routed and shared experts, dense layers) for each target.

    Args:
        model: an MoE causal LM or MoE vision-language model.
        batch: left-padded inputs (:mod:`neuronscope.inputs`; images too).
        targets: target tokens and the positions that produce them.
        layers: layers to score; default all.
        final_norm: scale by the final norm frozen at the target position.
        site: ``"neuron"`` only (the input of each expert's down projection).
        top_k: keep each (example, target)'s ``top_k`` best neurons, selected on the device (sparse scores; only
            they and the bias terms come to the host). Default None: every neuron.
        absolute: with ``top_k``, rank by magnitude (values keep their sign).

    Returns:
        :class:`ExpertNeuronScores` ``[examples, targets, neurons]`` on the CPU (zeros where a row has fewer
        targets), with the bias terms.

    Example:
        >>> scores = moe_contribution(model, batch, targets)
        >>> rows, values = scores.top_k(10)                  # [10, 3] (layer, expert, index)
    """
    adapter = get_adapter(model)
    if adapter.moe is None:
        raise NeuronscopeError("moe_contribution needs a mixture-of-experts model; use attribute.contribution")
    if site != "neuron":
        raise NeuronscopeError(f"MoE contribution is defined at the 'neuron' site (each expert's down-projection "
                               f"input), not '{site}'")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise NeuronscopeError(f"top_k must be a positive number of neurons, got {top_k!r}")
    layer_list = adapter.resolve_layers(layers)
    targets.check(batch.seq_len, adapter.vocab_size)
    positions = torch.where(targets.valid, targets.positions, torch.full_like(targets.positions, batch.seq_len - 1))
    device = adapter.unembedding().device
    last = adapter.n_layers - 1
    centre = final_norm and adapter.final_norm().kind == "layer"
    stacked = (_stacked(adapter, layer_list, positions, targets, final_norm, device)
               if top_k is not None and moe_stacked.fits(adapter, layer_list, centre) else None)
    with ExitStack() as stack:
        if stacked is None:
            acts = stack.enter_context(capture_experts(model, layers=layer_list, positions=positions, to=device,
                                                       router_logits=False))
        else:  # a few kernels a layer (attribute/moe_stacked.py); the same numbers
            stacked.attach(stack.enter_context(HookSet(adapter)))
        resid = stack.enter_context(capture(model, "resid_post", [last], positions)) if final_norm else None
        model(**batch.inputs)
    residual = resid.get("resid_post", last) if final_norm else None
    if stacked is None:
        scores, bias, layout = scores_from_capture(adapter, acts, targets.token_ids, layer_list, residual)
    else:
        layout, bias = sub_layout(adapter, layer_list), None
        scores = torch.zeros(*targets.token_ids.shape, layout.n_neurons, dtype=stacked.dtype, device=device)
        stacked.write(scores)
        if residual is not None:
            scores = scores / adapter.final_norm().scale(residual.to(device, stacked.dtype))
    valid = on_device(targets.valid, scores.device)[..., None]
    scores, bias = scores * valid, None if bias is None else (bias * valid).cpu()
    meta = {"method": "contribution", "site": site, "layers": layer_list, "final_norm": final_norm,
            "targets": targets.describe(), "model": adapter.describe()}
    if top_k is None:
        return ExpertNeuronScores(scores.cpu(), layout, None, bias, meta)
    found = (scores.abs() if absolute else scores).topk(min(top_k, scores.shape[-1]), dim=-1)  # on the device
    values = scores.gather(-1, found.indices) if absolute else found.values
    values, indices = to_host(values, found.indices)  # pinned, one wait
    return ExpertNeuronScores(values, layout, indices, bias, {**meta, "top_k_kept": top_k})
