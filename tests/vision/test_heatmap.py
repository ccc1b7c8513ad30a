"""Heatmaps: planted activation patterns must come back where they were planted, on the grid and on the image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.tiny_vlms import build_tiny_vlm, gradient_image
from neuronscope.errors import InputError
from neuronscope.models.image_grid import ImageLayout, Tile
from neuronscope.models.image_layout import image_layout
from neuronscope.results.io import write_png
from neuronscope.vision import (
    grid_on_image,
    image_heatmap,
    mask_above_percentile,
    mask_overlay,
    neuron_heatmap,
    overlay,
    top_neurons_mean,
    values_on_grid,
)


@pytest.fixture(scope="module")
def llava():
    return build_tiny_vlm("llava")


@pytest.fixture(scope="module")
def qwen():
    return build_tiny_vlm("qwen2_vl")


def planted(layout: ImageLayout, tile_index: int, cell: tuple[int, int], value: float = 5.0) -> torch.Tensor:
    """Per-image-token values: zeros except ``value`` at ``cell`` of tile ``tile_index``."""
    values = torch.zeros(layout.n_image_tokens)
    position = layout.tiles[tile_index].position_grid()[cell]
    values[layout.token_index(position[None])] = value
    return values


def cell_region(box, rows: int, cols: int, cell: tuple[int, int]) -> tuple[float, float, float, float]:
    left, top, right, bottom = box
    r, c = cell
    w, h = (right - left) / cols, (bottom - top) / rows
    return left + c * w, top + r * h, left + (c + 1) * w, top + (r + 1) * h


def argmax_pixel(heat: torch.Tensor) -> tuple[int, int]:
    """(x, y) of the largest finite value."""
    flat = torch.nan_to_num(heat, nan=-math.inf).flatten().argmax()
    y, x = divmod(int(flat), heat.shape[1])
    return x, y


def inside(point: tuple[float, float], region: tuple[float, float, float, float]) -> bool:
    x, y = point[0] + 0.5, point[1] + 0.5  # pixel centre
    return region[0] <= x <= region[2] and region[1] <= y <= region[3]


def test_values_on_grid_puts_each_token_in_its_cell():
    tile = Tile(2, 3, torch.tensor([10, 11, 12, 14, 15, 16]))
    layout = ImageLayout("llava", 0, torch.tensor([9, 10, 11, 12, 13, 14, 15, 16]), [tile])
    values = torch.arange(8).float()  # value i at positions[i]
    [grid] = values_on_grid(values, layout)
    assert torch.equal(grid, torch.tensor([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]]))
    [grid_k] = values_on_grid(torch.stack([values, -values], dim=1), layout)
    assert grid_k.shape == (2, 3, 2) and torch.equal(grid_k[..., 1], -grid)
    with pytest.raises(InputError, match="layout.positions"):
        values_on_grid(torch.zeros(5), layout)


def test_planted_cell_is_the_grid_argmax_and_the_image_hot_spot(llava):
    size = (60, 40)
    image = gradient_image(*size)
    batch = llava.inputs([image])
    layout = image_layout(llava.model, batch, processor=llava.processor, original_sizes=[size])
    acts = torch.randn(layout.n_image_tokens, 7, generator=torch.Generator().manual_seed(0)) * 0.1
    acts[:, 3] += planted(layout, 0, (2, 5))
    [grid] = neuron_heatmap(acts, layout, neuron=3)
    assert divmod(int(grid.argmax()), grid.shape[1]) == (2, 5)

    tile = layout.tiles[0]
    heat = grid_on_image(grid, size, tile.box)
    assert heat.shape == (40, 60)
    # The center crop dropped x < 10 and x >= 50 (box (10, 0, 50, 40)): no heat there.
    assert torch.isnan(heat[:, :10]).all() and torch.isnan(heat[:, 50:]).all()
    assert not torch.isnan(heat[:, 10:50]).any()
    region = cell_region(tile.box, 6, 6, (2, 5))  # x in [43.3, 50], y in [13.3, 20]
    assert inside(argmax_pixel(heat), region)

    mask = mask_above_percentile(heat, 95)
    ys, xs = mask.nonzero(as_tuple=True)
    assert mask.any()
    assert region[0] <= xs.float().mean() + 0.5 <= region[2]
    assert region[1] <= ys.float().mean() + 0.5 <= region[3]

    # On the overlay (grey colour map, alpha 1) the brightest pixel is the planted cell's.
    picture = overlay(image, grid, alpha=1.0, cmap="gray", box=tile.box)
    assert picture.size == image.size
    brightness = torch.from_numpy(np.asarray(picture, dtype=np.float32).mean(axis=2))
    assert inside(argmax_pixel(brightness.masked_fill(torch.isnan(heat), -1)), region)
    # The same through image_heatmap (all tiles of image 0, already on the image's pixels).
    whole = overlay(image, image_heatmap(acts[:, 3], layout), alpha=1.0, cmap="gray")
    whole_brightness = torch.from_numpy(np.asarray(whole, dtype=np.float32).mean(axis=2))
    assert inside(argmax_pixel(whole_brightness.masked_fill(torch.isnan(heat), -1)), region)
    # Pixels outside the box keep the original image.
    original = torch.from_numpy(np.asarray(image, dtype=np.float32).mean(axis=2))
    assert torch.equal(brightness[:, :10], original[:, :10])


def test_pad_to_square_hot_spot_lands_on_the_image():
    # A 60x40 image padded to 60x60 (10 px above and below): box (0, -10, 60, 50); cell (1, 3) of 6x6 covers
    # y in [0, 10) of the ORIGINAL image.
    box = (0.0, -10.0, 60.0, 50.0)
    tile = Tile(6, 6, torch.arange(36), box=box)
    layout = ImageLayout("llava", 0, torch.arange(36), [tile], image_sizes=[(60, 40)])
    [grid] = values_on_grid(planted(layout, 0, (1, 3)), layout)
    heat = grid_on_image(grid, (60, 40), box)
    assert not torch.isnan(heat).any()
    assert inside(argmax_pixel(heat), cell_region(box, 6, 6, (1, 3)))
    assert argmax_pixel(heat)[1] < 10


def test_qwen_planted_cell_on_the_whole_image(qwen):
    size = (60, 40)
    batch = qwen.inputs([gradient_image(*size)])
    layout = image_layout(qwen.model, batch, original_sizes=[size])
    tile = layout.tiles[0]
    assert (tile.rows, tile.cols) == (5, 8)
    values = planted(layout, 0, (2, 5))
    [grid] = values_on_grid(values, layout)
    assert divmod(int(grid.argmax()), tile.cols) == (2, 5)
    heat = image_heatmap(values, layout)
    assert inside(argmax_pixel(heat), cell_region((0, 0, 60, 40), 5, 8, (2, 5)))  # x 37.5-45, y 16-24


def test_llava_next_highres_and_base_agree_on_the_hot_spot():
    vlm = build_tiny_vlm("llava_next")
    size = (60, 40)
    batch = vlm.inputs([gradient_image(*size)])
    layout = image_layout(vlm.model, batch)
    base, high = layout.tiles
    # Plant a blob at the same place of the image in both grids: base cell (1, 2) of 4x4 covers x 30-45,
    # y 10-20; pick the high-res cell whose box-mapped centre falls there.
    values = planted(layout, 0, (1, 2))
    left, top, right, bottom = high.box
    target = (37.5, 15.0)
    c = int((target[0] - left) / (right - left) * high.cols)
    r = int((target[1] - top) / (bottom - top) * high.rows)
    values += planted(layout, 1, (r, c))
    heat_high = image_heatmap(values, layout, kinds=["highres"])
    heat_base = image_heatmap(values, layout, kinds=["base"])
    heat_both = image_heatmap(values, layout)
    assert inside(argmax_pixel(heat_base), (30, 10, 45, 20))
    assert inside(argmax_pixel(heat_high), cell_region(high.box, high.rows, high.cols, (r, c)))
    assert inside(argmax_pixel(heat_both), (30, 10, 45, 20))
    with pytest.raises(InputError, match="kinds"):
        image_heatmap(values, layout, kinds=["global"])


def test_grid_on_image_identity_when_grid_matches_pixels():
    grid = torch.arange(12).float().view(3, 4)
    heat = grid_on_image(grid, (4, 3))
    assert torch.allclose(heat, grid)
    # Upsampled x2: corners take the corner cells, everything else interpolates bilinearly.
    up = grid_on_image(grid, (8, 6))
    assert up[0, 0] == grid[0, 0] and up[5, 7] == grid[2, 3]
    # pixel (2, 2) has its centre at grid coordinate (0.75, 0.75): weights 1/16, 3/16, 3/16, 9/16
    expected = (grid[0, 0] + 3 * grid[0, 1] + 3 * grid[1, 0] + 9 * grid[1, 1]) / 16
    assert torch.isclose(up[2, 2], expected)


def test_top_neurons_mean_matches_a_loop():
    acts = torch.randn(10, 30, generator=torch.Generator().manual_seed(1))
    order = torch.randperm(30, generator=torch.Generator().manual_seed(2))
    means = top_neurons_mean(acts, order, ks=(1, 10, 50))
    assert set(means) == {1, 10}  # 50 > 30 neurons: skipped
    assert torch.allclose(means[1], acts[:, order[0]])
    expected = sum(acts[:, int(i)] for i in order[:10]) / 10
    assert torch.allclose(means[10], expected)
    with pytest.raises(InputError, match="smaller ks"):
        top_neurons_mean(acts, order, ks=(100,))


def test_mask_above_percentile_counts_and_ignores_nan():
    heat = torch.arange(100).float().view(10, 10)
    mask = mask_above_percentile(heat, 95)
    assert mask.sum() == 5 and mask.view(-1)[95:].all()
    heat[0, :] = float("nan")
    mask = mask_above_percentile(heat, 50)
    assert not mask[0].any()
    assert mask.sum() == 45  # 90 finite values 10..99, median 54.5


def test_mask_overlay_dims_outside_and_png_round_trip(tmp_path):
    image = gradient_image(20, 10)
    mask = torch.zeros(10, 20, dtype=torch.bool)
    mask[2:5, 3:9] = True
    shown = mask_overlay(image, mask, dim=0.0)
    pixels = np.asarray(shown)
    assert (pixels[~mask.numpy()] == 0).all()
    assert (pixels[mask.numpy()] == np.asarray(image)[mask.numpy()]).all()
    path = write_png(tmp_path / "sub" / "mask.png", shown)
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    assert (np.asarray(Image.open(path)) == pixels).all()
    with pytest.raises(InputError, match="mask is"):
        mask_overlay(image, mask.t())
