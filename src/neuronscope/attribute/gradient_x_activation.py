"""Gradient × activation: ``s[l, i] = a_i · ∂log P(y) / ∂a_i``, every layer at once.

The first-order (Taylor) estimate of what zeroing neuron ``i`` of layer ``l`` does to the target's
log-probability. Where the neuron is read (``positions``):

- ``"image"`` — Schwettmann et al. (2023, "Multimodal Neurons in Pretrained Text-Only Transformers"): the mean over
  the **image-prefix positions** ``P`` of ``a_i^p · ∂log P(y) / ∂a_i^p``, i.e. how much the neuron's activations on
  the image tokens feed the caption token. The default for inputs that carry an image (``"auto"``).
- ``"target"`` — at the position that produces the target (the default for text-only inputs, and an option for
  images: what the neuron does where the word is written, the position Pan et al.'s contribution scores).

One forward per batch, one backward per target column, batched over examples: each layer's site gets a zero
tensor ``δ`` added at the read positions (``a + δ``), and ``∂log P / ∂δ = ∂log P / ∂a`` without cutting any path
through the other layers.

Example:
    >>> targets = word_targets(tokenizer, batch, "Paris")
    >>> scores = gradient_x_activation(model, batch, targets)      # [examples, 1, layers, d_ff]
    >>> scores.top_k(10)
"""

from __future__ import annotations

import torch
from torch import nn

from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models.adapter import get_adapter
from neuronscope.models.image_grid import image_token_id
from neuronscope.results.scores import NeuronScores
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.positions import CallState
from neuronscope.trace.sites import NEURON_SITES, resolve_site


def _target_log_probability(logits: torch.Tensor, positions: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """``log P(token_ids[b] | positions[b])`` per row: logits ``[batch, T, vocab]`` → ``[batch]`` (≥ float32)."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    picked = logits[rows, positions.to(logits.device)]
    picked = picked.to(torch.promote_types(picked.dtype, torch.float32))
    return picked.log_softmax(-1)[rows, token_ids.to(logits.device)]


POSITIONS = ("auto", "image", "target")


def image_positions(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The image-token positions of each row, ``[batch, P]`` (padded with the last position), and their validity
    ``[batch, P]`` (the placeholder id of the model's config, as the processor expanded it)."""
    ids = batch.input_ids
    mask = ids == image_token_id(model.config)
    if not bool(mask.any(-1).all()):
        raise NeuronscopeError("positions='image' needs image tokens in every row: pass the image to the "
                               "processor with its placeholder in the prompt, or use positions='target'")
    count = int(mask.sum(-1).max())
    order = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices[:, :count]  # image positions first
    valid = torch.arange(count)[None] < mask.sum(-1, keepdim=True)
    return torch.where(valid, order, torch.full_like(order, batch.seq_len - 1)), valid


def _read_positions(model: nn.Module, batch: Batch, targets: TargetSet,
                    positions: str) -> tuple[str, torch.Tensor, torch.Tensor]:
    """(mode, where δ goes ``[batch, k]``, which of those count ``[batch, k]``)."""
    if positions not in POSITIONS:
        raise NeuronscopeError(f"positions must be one of {', '.join(POSITIONS)}, not {positions!r}")
    if positions == "auto":
        positions = "image" if "pixel_values" in batch.inputs else "target"
    if positions == "image":
        return "image", *image_positions(model, batch)
    last = torch.full_like(targets.positions, batch.seq_len - 1)
    return "target", torch.where(targets.valid, targets.positions, last), targets.valid


def gradient_x_activation(
    model: nn.Module,
    batch: Batch,
    targets: TargetSet,
    *,
    site: str = "neuron",
    layers: list[int] | None = None,
    positions: str = "auto",
) -> NeuronScores:
    """Gradient × activation of every neuron of the chosen layers, for each target.

    Args:
        model: a causal LM or a vision-language model.
        batch: left-padded inputs (:mod:`neuronscope.inputs`), run as one forward.
        targets: target tokens and the positions that produce them (:mod:`neuronscope.inputs.targets`).
        site: a neuron site (``"neuron"`` default, ``"act"``, ``"up"``, ``"gate"``, ``"pre"``); the scores differ
            between sites before and after a non-linearity.
        layers: layers to score; default all.
        positions: ``"auto"`` (default: ``"image"`` when the batch carries ``pixel_values``, else ``"target"``),
            ``"image"`` (mean over the image-prefix positions, Schwettmann et al.) or ``"target"``.

    Returns:
        NeuronScores ``[examples, targets, layers, d_ff]`` (float32, float64 for float64 models; zeros where a
        row has fewer targets).

    Example:
        >>> targets = token_targets(batch, [5, 9])
        >>> scores = gradient_x_activation(model, batch, targets, layers=[0, 1])
        >>> scores.values.shape                     # [2, 1, 2, d_ff]
    """
    if site not in NEURON_SITES:
        raise NeuronscopeError(f"gradient_x_activation is defined at the neuron sites {', '.join(NEURON_SITES)}, "
                               f"not '{site}'")
    adapter = get_adapter(model)
    if adapter.moe is not None:  # mixture-of-experts models: (layer, expert, index) neurons
        if site != "neuron":
            raise NeuronscopeError(f"gradient x activation of expert neurons is at the 'neuron' site, not '{site}'")
        if positions == "image" or (positions == "auto" and "pixel_values" in batch.inputs):
            raise NeuronscopeError("gradient x activation of expert neurons is read at the target position: "
                                   "pass positions='target'")
        from neuronscope.attribute.moe_gradients import moe_gradient_x_activation

        return moe_gradient_x_activation(model, batch, targets, layers=layers)
    layer_list = adapter.resolve_layers(layers)
    targets.check(batch.seq_len, adapter.vocab_size)
    mode, read, counted = _read_positions(model, batch, targets, positions)
    target_positions = torch.where(targets.valid, targets.positions,
                                   torch.full_like(targets.positions, batch.seq_len - 1))
    deltas: dict[int, torch.Tensor] = {}
    activations: dict[int, torch.Tensor] = {}

    def add_delta(layer: int):
        def hook(tensor: torch.Tensor, call: CallState) -> torch.Tensor | None:
            if call.offset != 0 or tensor.shape[1] != batch.seq_len:
                return None  # only the batch's own forward
            rows = torch.arange(tensor.shape[0], device=tensor.device)[:, None].expand_as(read)
            index = (rows, read.to(tensor.device))
            delta = torch.zeros(*read.shape, tensor.shape[-1], dtype=tensor.dtype, device=tensor.device,
                                requires_grad=True)
            deltas[layer], activations[layer] = delta, tensor[index].detach()  # [batch, k, d_ff]
            # accumulate: two read slots at one position each get their own δ, with the same gradient
            return tensor.index_put(index, delta, accumulate=True)

        return hook

    with HookSet(adapter) as hooks:
        for layer in layer_list:
            hooks.add(resolve_site(adapter, site, layer), add_delta(layer))
        with torch.enable_grad():
            logits = model(**batch.inputs).logits
    missing = [layer for layer in layer_list if layer not in deltas]
    if missing:
        raise NeuronscopeError(f"site '{site}' of layers {missing} did not run in the forward: check the model")
    dtype = torch.promote_types(activations[layer_list[0]].dtype, torch.float32)
    scores = torch.zeros(len(batch), targets.n_targets, len(layer_list), adapter.d_ff, dtype=dtype)
    inputs = [deltas[layer] for layer in layer_list]
    for column in range(targets.n_targets):
        valid = targets.valid[:, column]
        if not bool(valid.any()):
            continue
        log_p = _target_log_probability(logits, target_positions[:, column], targets.token_ids[:, column])
        total = (log_p * valid.to(log_p.device, log_p.dtype)).sum()
        grads = torch.autograd.grad(total, inputs, retain_graph=column < targets.n_targets - 1)
        for index, (layer, grad) in enumerate(zip(layer_list, grads, strict=True)):
            products = (activations[layer].to(dtype) * grad.to(dtype)).cpu()  # [batch, k, d_ff]
            scores[:, column, index] = products[:, column] if mode == "target" else _image_mean(products, counted)
    scores = scores * targets.valid[:, :, None, None]
    meta = {"method": "gradient_x_activation", "site": site, "layers": layer_list, "targets": targets.describe(),
            "model": adapter.describe(),
            "positions": "mean over the image-prefix positions" if mode == "image" else "target position"}
    return NeuronScores(scores, meta=meta)


def _image_mean(products: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """``[batch, P, d_ff]`` per-position products → ``[batch, d_ff]`` mean over each row's image positions."""
    weights = counted.to(products.dtype)[..., None]
    return (products * weights).sum(1) / weights.sum(1).clamp(min=1)
