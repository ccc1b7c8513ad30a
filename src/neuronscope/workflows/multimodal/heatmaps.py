"""Heatmaps of a concept's neurons over its images: each neuron's activation at the image-token positions, on the
model's vision grid, upsampled onto the image; binary masks above a percentile (Pan et al. 2024).

Files: ``heatmaps/<concept>.image<i>.<what>.png`` (overlay) and ``....mask.png`` in the run folder, for the top
single neurons and the mean of the top-k for each k of :data:`~neuronscope.vision.heatmap.TOP_KS`.

On a mixture-of-experts model the neurons are ``(layer, expert, index)`` rows and the map of an expert neuron is
its *gated* activation ``g_e · a_{e,i}`` at each image token (what multiplies its value vector in the layer's
output): 0 at the image tokens the router did not send to expert ``e``. Shared experts' neurons carry their gate
(1 where there is none); a dense layer's neurons (expert -1) their plain activation. Single-neuron maps are named
``top<n>.L<layer>E<expert>N<index>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from neuronscope.errors import InputError
from neuronscope.inputs.batch import DEFAULT_CAPTION_PREFIX, DEFAULT_CAPTION_PROMPT, to_model
from neuronscope.models.adapter import get_adapter
from neuronscope.models.image_layout import image_layout
from neuronscope.runs.folder import RunDir
from neuronscope.trace import capture
from neuronscope.trace.experts import capture_experts
from neuronscope.vision.heatmap import TOP_KS, image_heatmap, mask_above_percentile, mask_overlay, overlay
from neuronscope.workflows.multimodal.results import MultimodalNeurons
from neuronscope.workflows.multimodal.scoring import encode_captioning


@dataclass
class HeatmapResult:
    """Heatmaps drawn for one image (or the reason none could be drawn).

    Attributes:
        drawn: whether the model's image tokens have a spatial map.
        reason: why nothing was drawn (empty when drawn).
        heat: name -> ``[height, width]`` heat on the original image (``NaN`` where no tile reaches).
        masks: name -> ``BoolTensor [height, width]`` above the percentile.
        files: paths written.
    """

    drawn: bool
    reason: str = ""
    heat: dict[str, torch.Tensor] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


@torch.no_grad()
def image_token_activations(
    model: nn.Module,
    processor: Any,
    image: Image.Image,
    neurons: torch.Tensor,
    *,
    prompt: str = DEFAULT_CAPTION_PROMPT,
    assistant_prefix: str | None = DEFAULT_CAPTION_PREFIX,
    site: str = "neuron",
) -> tuple[Any, torch.Tensor]:
    """The layout of ``image``'s tokens and ``neurons``' activations there: ``[n_image_tokens, n]``.

    One forward of the captioning prompt, capturing ``site`` only at the image-token positions. On an MoE model
    ``neurons`` are ``[n, 3]`` (layer, expert, index) rows and the values are the gated activations ``g_e ·
    a_{e,i}`` (0 at tokens not routed to expert ``e``; see the module docstring).
    """
    moe = get_adapter(model).moe
    neurons = _neuron_rows(model, neurons)
    batch = encode_captioning(processor, [image], prompt, assistant_prefix)
    layout = image_layout(model, batch.inputs, 0, processor=processor, original_sizes=[image.size])
    if not layout.has_spatial_map:
        return layout, torch.zeros(layout.n_image_tokens, len(neurons))
    layers = sorted({int(layer) for layer in neurons[:, 0].tolist()})
    positions = layout.positions[None, :]
    if moe is not None:
        with capture_experts(model, layers=layers, positions=positions, to="cpu") as experts:
            model(**to_model(batch, model).inputs)
        local = moe.layout.flat(neurons) - torch.tensor([moe.layout.layer_block(int(row[0])).start for row in neurons])
        columns = [experts.weighted(int(row[0]))[0, :, int(i)] for row, i in zip(neurons, local, strict=True)]
        return layout, torch.stack(columns, dim=1).float()
    with capture(model, sites=site, layers=layers, positions=positions, to="cpu") as acts:
        model(**to_model(batch, model).inputs)
    columns = [acts.get(site, int(layer))[0, :, int(index)] for layer, index in neurons.tolist()]
    return layout, torch.stack(columns, dim=1).float()


def _neuron_rows(model: nn.Module, neurons: torch.Tensor) -> torch.Tensor:
    """``[n, 2]`` (layer, index) rows of a dense model; ``[n, 3]`` (layer, expert, index) rows of an MoE model."""
    moe = get_adapter(model).moe
    if moe is None:
        return torch.as_tensor(neurons, dtype=torch.long).reshape(-1, 2)
    return moe.layout.check(torch.as_tensor(neurons, dtype=torch.long).reshape(-1, 3))


def neuron_heatmaps(
    model: nn.Module,
    processor: Any,
    image: Image.Image,
    neurons: torch.Tensor,
    *,
    out: RunDir | None = None,
    name: str = "heatmap",
    single_neurons: int = 1,
    ks: Sequence[int] = TOP_KS,
    percentile: float = 95.0,
    prompt: str = DEFAULT_CAPTION_PROMPT,
    assistant_prefix: str | None = DEFAULT_CAPTION_PREFIX,
    site: str = "neuron",
    absolute: bool = False,
) -> HeatmapResult:
    """Heatmaps of ranked neurons over an image: the top ``single_neurons`` one by one, and the mean of the top-k
    for each ``k`` in ``ks`` (those not larger than the number of neurons).

    For each map: ``heatmaps/<name>.<what>.png`` (overlay) and ``heatmaps/<name>.<what>.mask.png`` (pixels above
    the ``percentile``-th percentile) in ``out``. Models whose image tokens have no spatial map (InstructBLIP,
    BLIP-2) draw nothing: the result says why (``drawn=False``), and ``heatmaps/<name>.txt`` records it.

    Args:
        neurons: ``[m, 2]`` (layer, index) ranked best first; ``[m, 3]`` (layer, expert, index) on an MoE model.
        absolute: draw ``|activation|`` instead of the signed activation (default False, as Pan et al.): gated
            FFNs' activations are signed, and a neuron may mark the object by a strongly negative value.

    Example:
        >>> maps = neuron_heatmaps(model, processor, image, result.concept_neurons("dog", 1000), out=run)  # doctest: +SKIP
    """
    neurons = _neuron_rows(model, neurons)
    if len(neurons) == 0:
        raise InputError("no neurons to draw: pass at least one (layer, index) row")
    layout, acts = image_token_activations(model, processor, image, neurons, prompt=prompt,
                                           assistant_prefix=assistant_prefix, site=site)
    acts = acts.abs() if absolute else acts
    if not layout.has_spatial_map:
        reason = f"no heatmap for model type {layout.family!r}: {layout.reason}"
        if out is not None:
            out.write_text(f"heatmaps/{name}.txt", reason + "\n")
        return HeatmapResult(False, reason)
    result = HeatmapResult(True)
    maps: dict[str, torch.Tensor] = {}
    for number in range(min(single_neurons, len(neurons))):
        row = neurons[number].tolist()
        expert = f"E{row[1]}" if len(row) == 3 else ""
        maps[f"top{number + 1}.L{row[0]}{expert}N{row[-1]}"] = acts[:, number]
    for k in ks:
        if 0 < k <= len(neurons):
            maps[f"mean_top{k}"] = acts[:, :k].mean(dim=1)
    for what, values in maps.items():
        heat = image_heatmap(values, layout, 0, image.size)
        mask = mask_above_percentile(heat, percentile)
        result.heat[what], result.masks[what] = heat, mask
        if out is not None:
            result.files.append(out.write_png(f"heatmaps/{name}.{what}.png", overlay(image, heat)))
            result.files.append(out.write_png(f"heatmaps/{name}.{what}.mask.png", mask_overlay(image, mask)))
    return result


def draw_concept_heatmaps(
    model: nn.Module,
    processor: Any,
    result: MultimodalNeurons,
    sources: Sequence[Any],
    run: RunDir,
    *,
    images_per_concept: int = 1,
    single_neurons: int = 3,
    prompt: str = DEFAULT_CAPTION_PROMPT,
    assistant_prefix: str | None = DEFAULT_CAPTION_PREFIX,
    rank_by: str = "sum",
    max_neurons: int = max(TOP_KS),
    max_concepts: int | None = None,
    absolute: bool = False,
) -> dict[str, list[HeatmapResult]]:
    """For each concept (the ``max_concepts`` with the most pairs), heatmaps of its top neurons on its first
    ``images_per_concept`` images."""
    out: dict[str, list[HeatmapResult]] = {}
    site = str(result.meta.get("site", "neuron"))
    for concept in result.concepts[:max_concepts]:
        neurons = result.concept_neurons(concept, max_neurons, rank_by)
        indices = list(dict.fromkeys(result.pairs[row]["index"] for row in result.pair_rows(concept)))
        for index in indices[:images_per_concept]:
            try:
                image = sources[index].load()
            except Exception:  # it loaded during captioning; if it vanished since, skip the drawing
                continue
            name = f"{_safe(concept)}.image{index}"
            drawn = neuron_heatmaps(model, processor, image, neurons, out=run, name=name,
                                    single_neurons=single_neurons, prompt=prompt,
                                    assistant_prefix=assistant_prefix, site=site, absolute=absolute)
            out.setdefault(concept, []).append(drawn)
    return out


def _safe(text: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text.strip())
    return "concept-" + cleaned[:60]  # never starts with "-" (shell-safe), never empty
