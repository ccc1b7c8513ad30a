"""Heatmaps over the image: per-image-token values on the vision grid, upsampled onto the original image.

Pipeline: ``values [n_image_tokens]`` (one per entry of ``layout.positions``) -> :func:`values_on_grid`
(one ``[rows, cols]`` grid per tile) -> :func:`grid_on_image` (bilinear, onto the tile's ``box`` in original
image pixels, ``NaN`` where the tile does not reach) -> :func:`overlay` / :func:`mask_above_percentile` /
:func:`mask_overlay` -> :func:`neuronscope.results.io.write_png`.

What "onto the original image" accounts for: the tile's ``box`` (set by :func:`~neuronscope.vision.image_layout`
from the processor's settings and the original size) says which part of the original image the grid saw:

- LLaVA-1.5 resize + center crop: the box is the crop, the cropped-away borders get no heat (``NaN``);
- LLaVA-1.5 pad-to-square: the box reaches outside the image; only the part over the image is drawn;
- LLaVA-NeXT high-res grid: the unpadded region (undoing the resize-and-pad into the pinpoint resolution);
- Qwen2-VL, Idefics3 global image, LLaVA-NeXT base: the whole image (they squash, never crop);
- Idefics3 crops: their share of the stretched image.

A tile with ``box=None`` (original size unknown) is drawn over the whole image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from neuronscope.errors import InputError
from neuronscope.models.image_grid import Box, ImageLayout

TOP_KS: tuple[int, ...] = (1, 10, 50, 100, 500, 1000)


def _require_map(layout: ImageLayout) -> None:
    if not layout.has_spatial_map:
        raise InputError(f"no heatmap for this model: {layout.reason}")


def values_on_grid(values: torch.Tensor, layout: ImageLayout) -> list[torch.Tensor]:
    """Put per-image-token values on each tile's grid.

    Args:
        values: ``[n_image_tokens]`` or ``[n_image_tokens, k]``, row ``i`` for ``layout.positions[i]``.
        layout: from :func:`~neuronscope.vision.image_layout`.

    Returns:
        One tensor per tile of ``layout.tiles``: ``[rows, cols]`` (or ``[rows, cols, k]``); cell ``(r, c)``
        holds the value of the token at ``tile.position_grid()[r, c]``. Newline and CLS tokens are left out.

    Example::

        grids = values_on_grid(acts[layout.positions, neuron], layout)
        grids[0].shape  # torch.Size([24, 24]) for LLaVA-1.5
    """
    _require_map(layout)
    if values.shape[0] != layout.n_image_tokens:
        raise InputError(
            f"got values for {values.shape[0]} tokens but the row has {layout.n_image_tokens} image tokens; "
            "index the activations with layout.positions"
        )
    grids = []
    for tile in layout.tiles:
        index = layout.token_index(tile.positions)
        grids.append(values[index].reshape(tile.rows, tile.cols, *values.shape[1:]))
    return grids


def neuron_heatmap(acts: torch.Tensor, layout: ImageLayout, neuron: int | None = None) -> list[torch.Tensor]:
    """One neuron's activation over the image tokens, as ``[rows, cols]`` grids (one per tile).

    Args:
        acts: ``[n_image_tokens]`` (already one neuron) or ``[n_image_tokens, n_neurons]`` with ``neuron``.
        layout: the row's layout.
        neuron: column of ``acts`` when it is 2-D.

    Example::

        grids = neuron_heatmap(acts_at_image_tokens, layout, neuron=1234)
    """
    if acts.dim() == 2:
        if neuron is None:
            raise InputError("acts has one column per neuron: pass neuron=<column index>")
        acts = acts[:, neuron]
    elif acts.dim() != 1:
        raise InputError(
            f"acts must be [n_image_tokens] or [n_image_tokens, n_neurons], got {tuple(acts.shape)}"
        )
    return values_on_grid(acts, layout)


def top_neurons_mean(
    acts: torch.Tensor, order: torch.Tensor, ks: Sequence[int] = TOP_KS
) -> dict[int, torch.Tensor]:
    """Mean activation of the top-k neurons at each image token, for each k.

    Args:
        acts: ``[n_image_tokens, n_neurons]``.
        order: ``LongTensor [m]`` neuron columns ranked best first (e.g. by score); ``m <= n_neurons``.
        ks: the k values (default 1, 10, 50, 100, 500, 1000); a k larger than ``len(order)`` is skipped.

    Returns:
        ``{k: [n_image_tokens]}``; feed each to :func:`values_on_grid`.

    Example::

        means = top_neurons_mean(acts, scores.argsort(descending=True))
        grids = values_on_grid(means[10], layout)
    """
    if acts.dim() != 2:
        raise InputError(f"acts must be [n_image_tokens, n_neurons], got {tuple(acts.shape)}")
    order = torch.as_tensor(order, dtype=torch.long).flatten()
    out: dict[int, torch.Tensor] = {}
    for k in ks:
        if 0 < k <= order.numel():
            out[int(k)] = acts[:, order[:k]].float().mean(dim=1)
    if not out:
        raise InputError(f"no k in {list(ks)} fits the {order.numel()} ranked neurons; pass smaller ks")
    return out


def normalize(heat: torch.Tensor) -> torch.Tensor:
    """Min-max scale to [0, 1], ignoring ``NaN`` (kept as ``NaN``); a constant map becomes zeros."""
    heat = heat.float()
    finite = heat[~torch.isnan(heat)]
    if finite.numel() == 0:
        return heat
    low, high = finite.min(), finite.max()
    scale = (high - low) if high > low else torch.ones(())
    return (heat - low) / scale


def grid_on_image(grid: torch.Tensor, image_size: tuple[int, int], box: Box | None = None) -> torch.Tensor:
    """Bilinearly upsample a ``[rows, cols]`` grid onto the original image.

    Args:
        grid: ``[rows, cols]`` values of one tile.
        image_size: original ``(width, height)``.
        box: the region of the image the grid covers (``tile.box``); default the whole image.

    Returns:
        ``[height, width]`` float tensor; pixels outside ``box`` are ``NaN``. Cell ``(r, c)`` has its centre at
        ``left + (c + 0.5) * (right - left) / cols`` (and likewise for rows), as in ``align_corners=False``.

    Example::

        heat = grid_on_image(grids[0], image.size, layout.tiles[0].box)
    """
    if grid.dim() != 2:
        raise InputError(f"grid must be [rows, cols], got {tuple(grid.shape)}")
    width, height = int(image_size[0]), int(image_size[1])
    left, top, right, bottom = box if box is not None else (0.0, 0.0, float(width), float(height))
    xs = (torch.arange(width, dtype=torch.float64) + 0.5 - left) / (right - left) * 2 - 1
    ys = (torch.arange(height, dtype=torch.float64) + 0.5 - top) / (bottom - top) * 2 - 1
    sample_y, sample_x = torch.meshgrid(ys, xs, indexing="ij")
    sampler = torch.stack([sample_x, sample_y], dim=-1)[None].float()
    heat = F.grid_sample(
        grid.detach().float().cpu()[None, None],
        sampler,
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )[0, 0]
    outside = (sample_x.abs() > 1) | (sample_y.abs() > 1)
    return heat.masked_fill(outside, float("nan"))


def image_heatmap(
    values: torch.Tensor,
    layout: ImageLayout,
    image_index: int = 0,
    image_size: tuple[int, int] | None = None,
    kinds: Sequence[str] | None = None,
) -> torch.Tensor:
    """Per-token values of one image drawn on its original pixels, averaging the tiles that cover a pixel.

    Args:
        values: ``[n_image_tokens]`` for the row (as in :func:`values_on_grid`).
        layout: the row's layout.
        image_index: which image of the row.
        image_size: original ``(width, height)``; default ``layout.image_sizes[image_index]``.
        kinds: tile kinds to use (e.g. ``["highres"]`` for LLaVA-NeXT, ``["tile"]`` for Idefics3 crops only);
            default all tiles of the image.

    Returns:
        ``[height, width]``, ``NaN`` where no chosen tile reaches. Each tile is min-max normalised first, so
        grids of different resolution weigh the same.
    """
    size = image_size or (layout.image_sizes[image_index] if image_index < layout.n_images else None)
    if size is None:
        raise InputError(
            "the original image size is unknown: pass image_size=(width, height) or original_sizes"
        )
    grids = values_on_grid(values, layout)
    total = torch.zeros(size[1], size[0])
    count = torch.zeros(size[1], size[0])
    used = 0
    for tile, grid in zip(layout.tiles, grids, strict=True):
        if tile.image_index != image_index or (kinds is not None and tile.kind not in kinds):
            continue
        heat = normalize(grid_on_image(grid, size, tile.box))
        seen = ~torch.isnan(heat)
        total[seen] += heat[seen]
        count[seen] += 1
        used += 1
    if used == 0:
        raise InputError(f"image {image_index} has no tiles of kinds {kinds}; see layout.tiles for the kinds")
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def _heat_to_rgba(heat: torch.Tensor, cmap: str) -> np.ndarray:
    import matplotlib

    colormap = matplotlib.colormaps[cmap]
    scaled = normalize(heat).numpy()
    rgba = colormap(np.nan_to_num(scaled, nan=0.0))
    rgba[..., 3] = np.where(np.isnan(scaled), 0.0, 1.0)
    return rgba


def overlay(
    image: Image.Image,
    grid: torch.Tensor,
    alpha: float = 0.5,
    cmap: str = "jet",
    box: Box | None = None,
) -> Image.Image:
    """Colour-map a grid (or an already upsampled ``[H, W]`` heat map) and blend it over the image.

    Args:
        image: the ORIGINAL image (any mode; converted to RGB).
        grid: ``[rows, cols]`` of one tile, upsampled with :func:`grid_on_image` onto ``box``; or a
            ``[height, width]`` map matching the image (e.g. from :func:`image_heatmap`), used as is.
        alpha: weight of the colour map where it is drawn (0 = image only, 1 = colours only).
        cmap: a matplotlib colormap name (default ``"jet"``: red = high).
        box: the tile's box on the original image (``tile.box``); default the whole image.

    Returns:
        A new RGB image of the original size; pixels outside the box (``NaN`` heat) are unchanged.

    Example::

        overlay(image, grids[0], box=layout.tiles[0].box).save("neuron.png")
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be within [0, 1], got {alpha}")
    rgb = image.convert("RGB")
    width, height = rgb.size
    heat = (
        grid if tuple(grid.shape) == (height, width) and box is None else grid_on_image(grid, rgb.size, box)
    )
    rgba = _heat_to_rgba(heat.float(), cmap)
    base = np.asarray(rgb, dtype=np.float64) / 255.0
    weight = alpha * rgba[..., 3:4]
    blended = base * (1 - weight) + rgba[..., :3] * weight
    return Image.fromarray((blended * 255).round().clip(0, 255).astype(np.uint8), mode="RGB")


def mask_above_percentile(heat: torch.Tensor, percentile: float = 95.0) -> torch.Tensor:
    """``BoolTensor [H, W]``: pixels strictly above the ``percentile``-th percentile of the finite heat values.

    ``NaN`` pixels (outside every tile) are never in the mask.

    Example::

        mask = mask_above_percentile(grid_on_image(grid, image.size, tile.box), 95)
    """
    if not 0.0 <= percentile <= 100.0:
        raise InputError(f"percentile must be within [0, 100], got {percentile}")
    values = heat.detach().float().cpu().numpy()
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return torch.zeros(heat.shape, dtype=torch.bool)
    threshold = np.percentile(finite, percentile)
    return torch.from_numpy(np.nan_to_num(values, nan=-np.inf) > threshold)


def mask_overlay(
    image: Image.Image, mask: torch.Tensor, dim: float = 0.25, color: tuple[int, int, int] | None = None
) -> Image.Image:
    """Show the masked region of the image: pixels outside the mask are darkened to ``dim`` brightness.

    Args:
        image: the original image.
        mask: ``BoolTensor [height, width]`` (from :func:`mask_above_percentile`).
        dim: brightness kept outside the mask (0 = black).
        color: optional RGB tint blended 50 % into the masked pixels.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    if tuple(mask.shape) != rgb.shape[:2]:
        raise InputError(f"mask is {tuple(mask.shape)} but the image is {rgb.shape[:2]} (height, width)")
    keep = mask.cpu().numpy()[..., None]
    out = np.where(keep, rgb, rgb * dim)
    if color is not None:
        out = np.where(keep, 0.5 * out + 0.5 * np.asarray(color, dtype=np.float64), out)
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8), mode="RGB")
