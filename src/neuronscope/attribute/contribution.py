"""Gradient-free contribution score of Pan et al. (2024), "Finding and Editing Multi-Modal Neurons in
Pre-Trained Transformers": ``s[l, i] = a[l, i] · <w_i, u_t>``, the raw logit contribution of neuron i of layer l to
token t at the position that produces t (no final norm, no softmax, no gradient). Optionally scaled by the final
norm frozen at that position (``final_norm=True``: ``<w_i, g_f ⊙ u_t> / σ``, LayerNorm's centring included).

``a_i w_i`` is the neuron's write into the residual where the family adds its FFN output unchanged (most). Where
it does not, ``residual_write=True`` scores the neuron's real write, ``<m · g_p ⊙ a_i w_i / σ_p, u_t>``: ``m`` the
residual multiplier (Granite, Falcon-H1, MiniCPM3) and ``g_p / σ_p`` the post-FFN norm (Gemma-2/3, OLMo-2, GLM-4)
frozen at the FFN output's scale; then ``Σ_i s[l, i] = <FFN write_l − its bias part, u_t>`` holds in every family
(``tests/models/test_accounting.py``). The default keeps the paper's raw ``a_i <w_i, u_t>`` (identical where the
family adds its FFN output unchanged). Layers without an FFN (hybrids) score 0 when ``layers`` is None.

``W_out^T u_t`` is computed for the needed targets only — never the ``d_ff × V`` table of the reference code.

Selection on the device (``top_k=`` or ``threshold=``, :mod:`neuronscope.attribute.contribution_device`): each
layer's scores are computed inside the forward and selected there; the captured activations of all layers never
exist, nothing dense reaches the host, the forward skips the logits and the KV cache it does not need
(``logits_to_keep=1``, ``use_cache=False``), and the kept entries come back through one pinned asynchronous copy. On
a GPU a small top-k call whose shape came before is replayed from a CUDA graph
(:mod:`neuronscope.attribute.contribution_graphs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models.accounting import WriteMap
from neuronscope.models.adapter import ModelAdapter, get_adapter
from neuronscope.results.scores import NeuronScores
from neuronscope.trace import capture
from neuronscope.trace.forward_options import activations_only

CONTRIBUTION_SITES = ("neuron", "act")


def contribution_scores(
    activations: torch.Tensor, value_projections: torch.Tensor, target_index: torch.Tensor
) -> torch.Tensor:
    """Pure math: ``scores [batch, n, layers, d_ff] = a[b, j, l, i] · proj[l, i, target_index[b, j]]``.

    Args:
        activations: ``[batch, n, layers, d_ff]`` activations at each target's position.
        value_projections: ``[layers, d_ff, m]`` = ``<w_i, u_t>`` for ``m`` distinct targets.
        target_index: ``[batch, n]`` which of the ``m`` targets each (row, target) is.
    """
    proj = value_projections.permute(2, 0, 1)[target_index]  # [batch, n, layers, d_ff]
    return activations * proj.to(activations.dtype)


def score_dtype(tensor: torch.Tensor) -> torch.dtype:
    """Scores are float32, or float64 for float64 models (tests compare to 1e-10 there)."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def value_projections(
    adapter: ModelAdapter, token_ids: torch.Tensor, layers: list[int], directions: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``<w_i, u_t>`` for the given tokens: ``[layers, d_ff, m]`` in float32 (float64 for float64 models; one
    matmul per layer).

    ``directions [m, d_model]`` replaces the unembedding rows (e.g. the final-norm-scaled ones). The result is
    gathered on ``device`` (default CPU).
    """
    if directions is None:
        directions = adapter.unembedding()[token_ids.to(adapter.unembedding().device)]
    out = []
    for layer in layers:
        weights = adapter.value_vectors(layer)  # [d_ff, d_model]
        out.append(value_products(weights, directions).T.to(score_dtype(weights)).to(device))
    return torch.stack(out)


def value_products(weights: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """``<w_i, v_j>`` as ``[m, d_ff]`` for value vectors ``weights [d_ff, d]`` and ``directions [m, d]``, in the
    weights' dtype on their device. Every contribution path computes the products this one way (the same
    matrix product on the same operands), so that the dense grid and the device-selected top-k hold the same
    numbers to the last bit."""
    return directions.to(weights.device, weights.dtype) @ weights.T


def scores_from_activations(
    adapter: ModelAdapter,
    activations: torch.Tensor,
    token_ids: torch.Tensor,
    layers: list[int],
    final_residual: torch.Tensor | None = None,
    ffn_outputs: torch.Tensor | None = None,
    residual_write: bool = False,
) -> torch.Tensor:
    """Contribution scores from captured activations, on their device: ``[..., n, layers, d_ff]``.

    Args:
        adapter: the model's adapter.
        activations: ``[..., n, layers, d_ff]`` the neuron site at each target's producing position.
        token_ids: ``[..., n]`` the target tokens.
        layers: the layers of ``activations``' layer axis.
        final_residual: ``[..., n, d_model]`` the last layer's output at those positions; when given, scores are
            scaled by the final norm frozen there (``<w_i, g ⊙ u_t> / σ``, LayerNorm's centring included).
        residual_write: score the neuron's write into the residual, ``m · g_p ⊙ a_i w_i / σ_p``
            (:meth:`ModelAdapter.ffn_write`), instead of ``a_i w_i``.
        ffn_outputs: ``[..., n, layers, d_model]`` the FFN output projection's outputs there; needed with
            ``residual_write`` where the family's FFN write is not its output unchanged (post norm, multiplier).
    """
    device = activations.device
    activations = activations.to(score_dtype(activations))
    unique, target_index = token_ids.unique(return_inverse=True)
    target_index = target_index.to(device)
    writes = [adapter.ffn_write(layer) if residual_write else WriteMap() for layer in layers]
    if not all(write.identity for write in writes):
        if ffn_outputs is None:
            raise NeuronscopeError(f"family '{adapter.family.name}' rescales or normalises its FFN output before the "
                                   "residual add: pass ffn_outputs (site 'ffn_out') to score neuron writes")
        scale = torch.stack([write.position_scale(ffn_outputs[..., slot, :].to(device))[..., 0]
                             for slot, write in enumerate(writes)], dim=-1)  # [..., n, layers]
        activations = activations * scale[..., None].to(activations.dtype)
    gains = [write.gain() for write in writes]
    dtype = activations.dtype
    directions = adapter.unembedding()[unique.to(adapter.unembedding().device)].to(device, dtype)  # [m, d]
    sigma = None
    if final_residual is not None:
        norm = adapter.final_norm()
        sigma = norm.scale(final_residual.to(device, dtype))  # [..., n, 1]
        directions = directions * norm.gain.to(device, dtype)
    per_layer = []
    for layer, gain in zip(layers, gains, strict=True):
        layer_directions = directions if gain is None else directions * gain.to(device, dtype)
        proj = value_projections(adapter, unique, [layer], layer_directions, device=device)[0]  # [d_ff, m]
        if final_residual is not None and adapter.final_norm().kind == "layer":
            # <c ⊙ w - mean(c ⊙ w), g ⊙ u>: the centring is linear, so it moves onto the (scaled) value vector
            vectors = adapter.value_vectors(layer).to(device, dtype)
            vectors = vectors if gain is None else vectors * gain.to(device, dtype)
            proj = proj - vectors.mean(-1)[:, None] * directions.sum(-1)[None, :]
        per_layer.append(proj)
    scores = contribution_scores(activations, torch.stack(per_layer), target_index)
    return scores if sigma is None else scores / sigma[..., None]


@torch.no_grad()
def contribution(
    model: nn.Module,
    batch: Batch,
    targets: TargetSet,
    *,
    site: str = "neuron",
    layers: list[int] | None = None,
    final_norm: bool = False,
    top_k: int | None = None,
    threshold: float | None = None,
    absolute: bool = False,
    residual_write: bool = False,
    graphs: bool = True,
) -> NeuronScores | SelectedScores:
    """Score every neuron's contribution to each target token.

    Args:
        model: a causal LM or a vision-language model.
        batch: left-padded inputs (:mod:`neuronscope.inputs`).
        targets: target tokens and the positions that produce them (:mod:`neuronscope.inputs.targets`).
        site: ``"neuron"`` (default: the input of the FFN output projection, where the identity
            ``Σ_i s[l, i] = <ffn_out_l, u_t>`` holds) or ``"act"`` (the activation function's output alone,
            which Pan et al.'s released code hooks).
        layers: layers to score; default all.
        final_norm: scale by the final norm frozen at the target position (``g_f / σ``).
        top_k: keep the ``top_k`` best neurons of each (example, target) over all scored layers, selected on the
            device during the forward (module docstring). Default None: the dense grid.
        threshold: keep every score ``>= threshold`` (``|score|`` with ``absolute``), selected on the device.
        absolute: with ``top_k`` / ``threshold``, rank by magnitude (values keep their sign).
        residual_write: score the neuron's write into the residual stream (through the family's post-FFN norm,
            frozen, and its residual multiplier) instead of ``a_i w_i``; the same where the family has neither.
            Not with ``top_k`` / ``threshold`` where the family rescales its FFN output.
        graphs: with ``top_k`` on a CUDA device, run small calls on the batch padded to a length bucket and
            replay a call whose shape came before from a CUDA graph (text inputs, ``sdpa`` attention:
            :mod:`neuronscope.attribute.contribution_graphs`); the same scores up to rounding (in bfloat16 a kept
            set can differ at its boundary). False: every call eager and unpadded, its kept values the dense
            grid's to the last bit.

    Returns:
        dense NeuronScores ``[examples, targets, layers, d_ff]`` (zeros where a row has fewer targets); with
        ``top_k`` sparse NeuronScores (``values`` / ``indices [examples, targets, k]``, flat indices
        ``slot * d_ff + i`` over the scored layers, best first; zeros where a row has fewer targets); with
        ``threshold`` :class:`SelectedScores`.

    Example:
        >>> targets = word_targets(tokenizer, batch, "Paris")
        >>> scores = contribution(model, batch, targets)
        >>> scores.top_k(10)
        >>> kept = contribution(model, batch, targets, top_k=10_000)   # sparse, selected on the device
    """
    if site not in CONTRIBUTION_SITES:
        raise NeuronscopeError(f"contribution is defined at sites {CONTRIBUTION_SITES}, not '{site}'")
    adapter = get_adapter(model)
    if adapter.moe is not None:  # mixture-of-experts models: (layer, expert, index) neurons, ExpertNeuronScores
        from neuronscope.attribute.moe_contribution import moe_contribution

        if threshold is not None:
            raise NeuronscopeError("a threshold on expert neurons is not supported: pass top_k (selected on the device)")
        return moe_contribution(model, batch, targets, layers=layers, final_norm=final_norm, site=site, top_k=top_k,
                                absolute=absolute)
    layer_list = adapter.resolve_layers(layers)
    targets.check(batch.seq_len, adapter.vocab_size)
    if top_k is not None and threshold is not None:
        raise NeuronscopeError("give top_k or threshold, not both")
    scored = [layer for layer in layer_list if adapter.has_ffn(layer)] if layers is None else layer_list
    scored = [adapter.require_ffn(layer) for layer in scored]
    rescaled = residual_write and not all(adapter.ffn_write(layer).identity for layer in scored)
    if top_k is not None or threshold is not None:
        if rescaled:
            raise NeuronscopeError(f"family '{adapter.family.name}' rescales or normalises its FFN output: "
                                   "residual_write scores come as the dense grid only; drop top_k / threshold")
        from neuronscope.attribute.contribution_device import selected_contribution

        return selected_contribution(model, adapter, batch, targets, scored, site, final_norm, top_k, threshold,
                                     absolute, graphs)
    sites = [site] + (["ffn_out"] if rescaled else [])
    positions = torch.where(targets.valid, targets.positions, torch.full_like(targets.positions, batch.seq_len - 1))
    # Everything stays on the device of the unembedding; only the final scores come back to the CPU.
    device = adapter.unembedding().device
    last = adapter.n_layers - 1
    options = activations_only(model)
    if final_norm:  # the readout check needs the logits at the target positions
        options.pop("logits_to_keep", None)
    with capture(model, sites=sites, layers=scored, positions=positions) as acts, \
            capture(model, sites="resid_post", layers=[last], positions=positions) as final:
        output = model(**batch.inputs, **options)
    activations = torch.stack([acts.get(site, layer).to(device) for layer in scored], dim=2)  # [B, n, L, d_ff]
    residual = final.get("resid_post", last) if final_norm else None  # [B, n, d]
    if final_norm:
        adapter.check_readout(residual, getattr(output, "logits", None), positions)
    outputs = torch.stack([acts.get("ffn_out", layer).to(device) for layer in scored], dim=2) if rescaled else None
    partial = scores_from_activations(adapter, activations, targets.token_ids, scored, final_residual=residual,
                                      ffn_outputs=outputs, residual_write=residual_write).cpu()
    scores = partial.new_zeros(*partial.shape[:2], len(layer_list), adapter.d_ff)
    scores[:, :, [layer_list.index(layer) for layer in scored]] = partial
    scores = scores * targets.valid[:, :, None, None]
    meta = {"method": "contribution", "site": site, "layers": layer_list, "final_norm": final_norm,
            "residual_write": residual_write,
            "targets": targets.describe(), "model": adapter.describe()}
    return NeuronScores(scores, meta=meta)


@dataclass
class SelectedScores:
    """Contribution scores at or above a threshold: coordinates and values (sparse, any number per target).

    Attributes:
        coordinates: ``[nnz, 4]`` (example, target, layer slot, neuron).
        values: ``[nnz]``.
        shape: ``(examples, targets, layers, d_ff)`` of the grid they come from.
        meta: how they were made.
    """

    coordinates: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int, int, int]
    meta: dict[str, Any] = field(default_factory=dict)

    def dense(self) -> torch.Tensor:
        """The grid with zeros where nothing was kept (for small models and tests)."""
        out = torch.zeros(self.shape, dtype=self.values.dtype)
        out[tuple(self.coordinates.T)] = self.values
        return out


def layer_projection(adapter: ModelAdapter, layer: int, directions: torch.Tensor, centre: bool,
                     device: torch.device) -> torch.Tensor:
    """``<w_i, direction_j>`` of one layer ``[d_ff, m]`` in the score dtype on ``device`` (LayerNorm's centring
    moved onto ``w`` when ``centre``), as :func:`value_projections` computes it."""
    return centred_products(adapter.value_vectors(layer), directions, centre).T.to(device)


def centred_products(weights: torch.Tensor, directions: torch.Tensor, centre: bool) -> torch.Tensor:
    """:func:`value_products` ``[m, d_ff]`` in the score dtype on the weights' device, with LayerNorm's centring
    moved onto the value vectors when ``centre``: ``<w - mean(w), v> = <w, v> - mean(w) · Σ v``."""
    dtype = score_dtype(weights)
    proj = value_products(weights, directions).to(dtype)
    if centre:
        proj = proj - weights.to(dtype).mean(-1)[None, :] * directions.to(proj.device, dtype).sum(-1)[:, None]
    return proj
