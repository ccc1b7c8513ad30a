"""Image layouts of every vision-language family, against the real processor and the model's own receptive fields.

For each family (tiny random model, real processor class) and several odd image sizes / aspect ratios:

- the layout's positions are exactly the image tokens the processor wrote, and its grid shapes are what the
  processor's own output says (``image_grid_thw``, ``[IMG_BREAK]`` rows, row/col markers, tiles in
  ``pixel_values``);
- **receptive fields**: with the vision tower's attention switched off (value and output projections zeroed, so
  each patch's feature depends on its own pixels only), the gradient of the language model's input at an image
  token with respect to ``pixel_values`` shows which pixels that token reads. The test image encodes the original x
  in its red channel and y in its green channel, so the |gradient|-weighted centre of those pixels, decoded, is the
  place in the ORIGINAL image the token stands for; it must fall in the cell the layout assigns (the cell of its
  tile's box). This checks grid order, tile order, unpadding, shrinking and boxes at once, through the model.
- **planted pattern**: each token's decoded x (and y) planted as its activation lands, through
  :func:`neuronscope.vision.values_on_grid`, on a grid that increases from left to right (top to bottom).

Families without a spatial map (learned queries, perceiver latents) must say so and refuse heatmaps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.tiny_vlms import FAMILIES as OLD_FAMILIES
from helpers.tiny_vlms import build_tiny_vlm, gradient_image
from helpers.tiny_vlms_current import FAMILIES as CURRENT_FAMILIES
from helpers.tiny_vlms_current import build_current_vlm
from neuronscope.errors import InputError, UnsupportedModelError
from neuronscope.models import get_adapter
from neuronscope.models.image_grid import image_token_id, sub_box
from neuronscope.models.image_layout import image_layout
from neuronscope.vision import values_on_grid

SIZES = [(60, 40), (30, 70), (45, 45), (97, 23)]
FAMILIES = tuple(OLD_FAMILIES) + tuple(CURRENT_FAMILIES)
NO_MAP = ("instructblip", "idefics2")
_ATTENTION_LINEARS = ("v_proj", "qkv", "out_proj", "o_proj", "proj", "projection_layer")


def _build(family: str):
    return build_current_vlm(family) if family in CURRENT_FAMILIES else build_tiny_vlm(family)


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request):
    vlm = _build(request.param)
    vlm.name = request.param
    _switch_off_vision_attention(vlm.model)
    return vlm


def _tower(model):
    inner = getattr(model, "model", model)
    for name in ("vision_tower", "vision_model", "visual"):
        if hasattr(inner, name):
            return getattr(inner, name)
    raise AssertionError("no vision tower found")


def _switch_off_vision_attention(model) -> None:
    zeroed = 0
    with torch.no_grad():
        for name, module in _tower(model).named_modules():
            parts = name.split(".")[-2:]  # Gemma-4 wraps its linears: self_attn.v_proj.linear
            if isinstance(module, torch.nn.Linear) and ("attn" in name or "attention" in name) \
                    and any(part in _ATTENTION_LINEARS for part in parts):
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
                zeroed += 1
    assert zeroed


BLUE = 200  # no processor pads with this colour, so pad pixels can be told apart from image pixels


def coded_image(width: int, height: int):
    """The test image: red = 255 x / (W - 1), green = 255 y / (H - 1), blue = BLUE."""
    image = np.asarray(gradient_image(width, height)).copy()
    image[..., 2] = BLUE
    from PIL import Image

    return Image.fromarray(image, mode="RGB")


def _inputs(vlm, size):
    return vlm.inputs([coded_image(*size)])


def test_positions_are_the_processors_image_tokens(vlm):
    for size in SIZES:
        batch = _inputs(vlm, size)
        layout = image_layout(vlm.model, batch, processor=vlm.processor, original_sizes=[size])
        expected = (batch["input_ids"][0] == image_token_id(vlm.model.config)).nonzero().flatten()
        assert torch.equal(layout.positions, expected)
        if vlm.name in NO_MAP:
            assert not layout.has_spatial_map and layout.reason
            with pytest.raises(InputError):
                values_on_grid(torch.zeros(layout.n_image_tokens), layout)
            continue
        covered = torch.cat([t.positions for t in layout.tiles] + [layout.newline_positions, layout.extra_positions])
        assert torch.equal(covered.sort().values, expected)  # every image token is a cell, a newline or an extra


def test_grid_shapes_are_what_the_processor_wrote(vlm):
    if vlm.name in NO_MAP:
        pytest.skip("no spatial map")
    for size in SIZES:
        batch = _inputs(vlm, size)
        layout = image_layout(vlm.model, batch, processor=vlm.processor, original_sizes=[size])
        expected = _processor_grids(vlm, batch)
        if expected is not None:
            assert [(t.rows, t.cols) for t in layout.tiles] == expected, size


def _processor_grids(vlm, batch) -> list[tuple[int, int]] | None:
    """Grid shapes read off the processor's own output (None where it does not state them)."""
    ids = batch["input_ids"][0].tolist()
    tok = vlm.processor.tokenizer
    if "image_grid_thw" in batch:
        return [(int(h) // 2, int(w) // 2) for _, h, w in batch["image_grid_thw"].tolist()]
    if vlm.name in ("mistral3", "llava_pixtral"):
        img, brk, end = (tok.convert_tokens_to_ids(t) for t in ("[IMG]", "[IMG_BREAK]", "[IMG_END]"))
        rows = [0]
        for token in ids[ids.index(img):ids.index(end) + 1]:
            if token == img:
                rows[-1] += 1
            elif token == brk:
                rows.append(0)
        assert len(set(rows)) == 1
        return [(len(rows), rows[0])]
    if vlm.name in ("internvl", "aya_vision", "paligemma", "gemma3", "janus"):
        n_tiles = int(batch["pixel_values"].shape[0])
        per_tile = len(_image_positions(vlm, batch)) // n_tiles
        side = int(round(per_tile ** 0.5))
        return [(side, side)] * n_tiles
    return None


def _image_positions(vlm, batch) -> list[int]:
    return (batch["input_ids"][0] == image_token_id(vlm.model.config)).nonzero().flatten().tolist()


# -- receptive fields --------------------------------------------------------------------------------------------
def _decode(vlm, pixels: np.ndarray, size) -> tuple[np.ndarray, np.ndarray]:
    """Original (x, y) of processed pixels ``[..., C]`` (channels last), from the test image's colours, and
    whether each pixel is the image's (not the processor's padding)."""
    image_processor = vlm.processor.image_processor
    normalised = getattr(image_processor, "do_normalize", True)
    mean = np.asarray(image_processor.image_mean if normalised else [0.0, 0.0, 0.0])
    std = np.asarray(image_processor.image_std if normalised else [1.0, 1.0, 1.0])
    rgb = (pixels * std + mean) * 255
    width, height = size
    inside = np.abs(rgb[..., 2] - BLUE) < 25  # not padding
    return rgb[..., 0] * (width - 1) / 255, rgb[..., 1] * (height - 1) / 255, inside


def _receptive_centres(vlm, batch, positions: list[int], size) -> dict[int, tuple[float, float]]:
    """Decoded original (x, y) that each image-token position reads, |gradient|-weighted."""
    model = vlm.model
    adapter = get_adapter(model)
    pixel_values = batch["pixel_values"].clone().float().requires_grad_(True)
    if vlm.name == "instructblip":
        return {}
    inputs = {**batch, "pixel_values": pixel_values}
    seen = {}

    def keep(module, args, kwargs):
        seen["embeds"] = kwargs.get("inputs_embeds")

    handle = adapter.decoder.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        model(**inputs)
    finally:
        handle.remove()
    embeds = seen["embeds"]
    direction = torch.randn(embeds.shape[-1], generator=torch.Generator().manual_seed(0))
    pixels = pixels_raw = pixel_values.detach().numpy()
    qwen = pixels.ndim == 2
    patched = pixels.ndim == 3  # Gemma-4: [images, patches, P * P * C], channels last
    if qwen:  # [patches, C * T * P * P]
        patch = int(vlm.numbers["patch_size"])
        pixels = pixels.reshape(pixels.shape[0], 3, 2, patch, patch)
    centres = {}
    for position in positions:
        (grad,) = torch.autograd.grad((embeds[0, position] * direction).sum(), pixel_values, retain_graph=True)
        grad = grad.abs().numpy()
        if qwen:
            grad = grad.reshape(pixels.shape).sum(1)  # [patches, T, P, P]
            x, y, inside = _decode(vlm, np.moveaxis(pixels, 1, -1), size)
        elif patched:
            grad = grad.reshape(*grad.shape[:2], -1, 3).sum(-1)  # [images, patches, P * P]
            x, y, inside = _decode(vlm, pixels_raw.reshape(*pixels_raw.shape[:2], -1, 3), size)
        else:
            grad = grad.sum(-3)  # over channels: [..., H, W]
            x, y, inside = _decode(vlm, np.moveaxis(pixels, -3, -1), size)
        weight = grad * inside
        if grad.sum() == 0 or weight.sum() < 0.5 * grad.sum():  # newline, or mostly padding: nothing to check
            centres[position] = None
            continue
        weight = weight / weight.sum()
        centres[position] = (float((weight * x).sum()), float((weight * y).sum()))
    return centres


def _sample(tile, per_tile: int = 6) -> list[tuple[int, int]]:
    cells = [(0, 0), (tile.rows - 1, tile.cols - 1), (0, tile.cols - 1), (tile.rows - 1, 0)]
    cells += [(tile.rows // 2, tile.cols // 2), (tile.rows // 2, 0)]
    return list(dict.fromkeys(cells))[:per_tile]


@pytest.mark.parametrize("size", SIZES)
def test_each_token_reads_the_cell_the_layout_gives_it(vlm, size):
    if vlm.name in NO_MAP:
        pytest.skip("no spatial map")
    batch = _inputs(vlm, size)
    layout = image_layout(vlm.model, batch, processor=vlm.processor, original_sizes=[size])
    picks = [(tile, r, c, int(tile.position_grid()[r, c])) for tile in layout.tiles for r, c in _sample(tile)]
    centres = _receptive_centres(vlm, batch, [p for *_, p in picks], size)
    for tile, r, c, position in picks:
        assert tile.box is not None, f"{vlm.name}: tile {tile.kind} has no box"
        left, top, right, bottom = sub_box(tile.box, r, c, tile.rows, tile.cols)
        if centres[position] is None:  # the cell is padding: its box must lie (mostly) outside the image
            width, height = size
            assert right <= 0.5 * (right - left) or left >= width - 0.5 * (right - left) or \
                bottom <= 0.5 * (bottom - top) or top >= height - 0.5 * (bottom - top), (vlm.name, r, c)
            continue
        x, y = centres[position]
        slack_x = 0.3 * (right - left) + 1.0
        slack_y = 0.3 * (bottom - top) + 1.0
        assert left - slack_x <= x <= right + slack_x, (vlm.name, size, tile.kind, r, c, x, (left, right))
        assert top - slack_y <= y <= bottom + slack_y, (vlm.name, size, tile.kind, r, c, y, (top, bottom))


def test_a_planted_pattern_lands_on_the_right_cells(vlm):
    if vlm.name in NO_MAP:
        pytest.skip("no spatial map")
    size = SIZES[0]
    batch = _inputs(vlm, size)
    layout = image_layout(vlm.model, batch, processor=vlm.processor, original_sizes=[size])
    centres = _receptive_centres(vlm, batch, layout.positions.tolist(), size)
    nan = (float("nan"), float("nan"))  # padding cells
    planted = torch.tensor([centres[int(p)] or nan for p in layout.positions], dtype=torch.float64)  # [n, 2]
    for tile, grid in zip(layout.tiles, values_on_grid(planted, layout), strict=True):
        # x grows left to right, y top to bottom, in every row / column of every tile (padding cells aside)
        right, below = grid[:, 1:, 0] > grid[:, :-1, 0], grid[1:, :, 1] > grid[:-1, :, 1]
        assert bool((right | grid[:, 1:, 0].isnan() | grid[:, :-1, 0].isnan()).all()), (vlm.name, tile.kind)
        assert bool((below | grid[1:, :, 1].isnan() | grid[:-1, :, 1].isnan()).all()), (vlm.name, tile.kind)
        assert int((~grid[..., 0].isnan()).sum()) >= grid[..., 0].numel() // 2


# -- adapter-time refusal ----------------------------------------------------------------------------------------
def test_a_vlm_without_a_layout_reader_is_refused_unless_text_only():
    import transformers as T

    from helpers.tiny_vlms import _tiny_clip_vision, _tiny_llama

    config = T.VipLlavaConfig(vision_config=_tiny_clip_vision(32, 8), text_config=_tiny_llama(64, 0),
                              image_token_index=5)
    model = T.VipLlavaForConditionalGeneration(config).eval()
    with pytest.raises(UnsupportedModelError, match="text_only=True"):
        get_adapter(model)
    adapter = get_adapter(model, text_only=True)
    assert adapter.text_only and adapter.family.name == "llama"
    assert get_adapter(model) is adapter  # remembered for the library's own calls
