"""Gradient-free contribution score of Pan et al. (2024), "Finding and Editing Multi-Modal Neurons in
Pre-Trained Transformers": ``s[l, i] = a[l, i] · <w_i, u_t>``, the raw logit contribution of neuron i of layer l to
token t at the position that produces t (no final norm, no softmax, no gradient). Optionally scaled by the final
norm frozen at that position (``final_norm=True``: ``<w_i, g_f ⊙ u_t> / σ``, LayerNorm's centring included).

``W_out^T u_t`` is computed for the needed targets only — never the ``d_ff × V`` table of the reference code.
"""

from __future__ import annotations

import torch
from torch import nn

from neuronscope.attribute.registry import register
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models.adapter import ModelAdapter, get_adapter
from neuronscope.results.scores import NeuronScores
from neuronscope.trace import capture

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
        out.append((weights @ directions.to(weights.device, weights.dtype).T).to(score_dtype(weights)).to(device))
    return torch.stack(out)


def scores_from_activations(
    adapter: ModelAdapter,
    activations: torch.Tensor,
    token_ids: torch.Tensor,
    layers: list[int],
    final_residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Contribution scores from captured activations, on their device: ``[..., n, layers, d_ff]``.

    Args:
        adapter: the model's adapter.
        activations: ``[..., n, layers, d_ff]`` the neuron site at each target's producing position.
        token_ids: ``[..., n]`` the target tokens.
        layers: the layers of ``activations``' layer axis.
        final_residual: ``[..., n, d_model]`` the last layer's output at those positions; when given, scores are
            scaled by the final norm frozen there (``<w_i, g ⊙ u_t> / σ``, LayerNorm's centring included).
    """
    device = activations.device
    activations = activations.to(score_dtype(activations))
    unique, target_index = token_ids.unique(return_inverse=True)
    target_index = target_index.to(device)
    if final_residual is None:
        return contribution_scores(activations, value_projections(adapter, unique, layers, device=device),
                                   target_index)
    norm = adapter.final_norm()
    sigma = norm.scale(final_residual.to(device, activations.dtype))  # [..., n, 1]
    directions = adapter.unembedding()[unique.to(adapter.unembedding().device)].to(device, activations.dtype)
    directions = directions * norm.gain.to(device, activations.dtype)
    proj = value_projections(adapter, unique, layers, directions, device=device)
    if norm.kind == "layer":  # <w - mean(w), g ⊙ u>: the centring is linear, so it moves onto w
        mean_w = torch.stack([adapter.value_vectors(layer).to(device, activations.dtype).mean(-1) for layer in layers])
        proj = proj - mean_w[:, :, None] * directions.sum(-1)[None, None, :]
    return contribution_scores(activations, proj, target_index) / sigma[..., None]


@register("contribution", "a·<w_i, u_t>: gradient-free logit contribution", "Pan et al. 2024 (multimodal neurons)")
@torch.no_grad()
def contribution(
    model: nn.Module,
    batch: Batch,
    targets: TargetSet,
    *,
    site: str = "neuron",
    layers: list[int] | None = None,
    final_norm: bool = False,
) -> NeuronScores:
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

    Returns:
        NeuronScores ``[examples, targets, layers, d_ff]`` (zeros where a row has fewer targets).

    Example:
        >>> targets = word_targets(tokenizer, batch, "Paris")
        >>> scores = contribution(model, batch, targets)
        >>> scores.top_k(10)
    """
    if site not in CONTRIBUTION_SITES:
        raise NeuronscopeError(f"contribution is defined at sites {CONTRIBUTION_SITES}, not '{site}'")
    adapter = get_adapter(model)
    if adapter.moe is not None:  # mixture-of-experts models: (layer, expert, index) neurons, ExpertNeuronScores
        from neuronscope.attribute.moe_contribution import moe_contribution

        return moe_contribution(model, batch, targets, layers=layers, final_norm=final_norm, site=site)
    layer_list = adapter.resolve_layers(layers)
    targets.check(batch.seq_len, adapter.vocab_size)
    sites = [site] + (["resid_post"] if final_norm else [])
    capture_layers = sorted(set(layer_list) | ({adapter.n_layers - 1} if final_norm else set()))
    positions = torch.where(targets.valid, targets.positions, torch.full_like(targets.positions, batch.seq_len - 1))
    # Everything stays on the device of the unembedding; only the final scores come back to the CPU.
    device = adapter.unembedding().device
    with capture(model, sites=sites, layers=capture_layers, positions=positions) as acts:
        model(**batch.inputs)
    activations = torch.stack([acts.get(site, layer).to(device) for layer in layer_list], dim=2)  # [B, n, L, d_ff]
    residual = acts.get("resid_post", adapter.n_layers - 1) if final_norm else None  # [B, n, d]
    scores = scores_from_activations(adapter, activations, targets.token_ids, layer_list, final_residual=residual)
    scores = scores.cpu()
    scores = scores * targets.valid[:, :, None, None]
    meta = {"method": "contribution", "site": site, "layers": layer_list, "final_norm": final_norm,
            "targets": targets.describe(), "model": adapter.describe()}
    return NeuronScores(scores, meta=meta)
