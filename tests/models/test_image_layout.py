"""image_layout against each family's own processor and model code (tiny random models, no downloads).

Oracles: the processor's token counts and grids (input_ids, image_grid_thw, image_sizes any-res math,
Idefics3 rows/cols), the model's own packing / pixel-shuffle code fed with labelled features, and the pixel
content of the processed image (a gradient image whose red channel encodes x and green channel encodes y).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlavaImageProcessorPil, LlavaProcessor
from transformers.image_processing_utils import select_best_resolution

from helpers.tiny_vlms import build_tiny_vlm, gradient_image, tiny_llava
from neuronscope.errors import InputError, NeuronscopeError, UnsupportedModelError
from neuronscope.models.image_layout import image_layout
from neuronscope.models.layouts.llava_next import tokens_per_image
from neuronscope.vision import values_on_grid

SIZES = [(60, 40), (30, 70), (100, 100), (45, 45), (97, 23)]


@pytest.fixture(scope="module")
def vlms() -> dict:
    return {}


def get(vlms: dict, family: str):
    if family not in vlms:
        vlms[family] = build_tiny_vlm(family)
    return vlms[family]


def placeholder_positions(batch, token_id: int, row: int = 0) -> torch.Tensor:
    return (batch["input_ids"][row] == token_id).nonzero().flatten()


def unnormalize(pixels: torch.Tensor, processor) -> np.ndarray:
    """Processed pixels [C, H, W] back to 0..255 values."""
    image_processor = processor.image_processor
    mean = np.asarray(image_processor.image_mean)[:, None, None]
    std = np.asarray(image_processor.image_std)[:, None, None]
    return (pixels.numpy() * std + mean) * 255


def unnormalize_tensor(pixels: torch.Tensor, processor) -> torch.Tensor:
    return torch.from_numpy(unnormalize(pixels, processor)).float()


def expected_red(x: float, width: int) -> float:
    """Red value of gradient_image at original x (pixel centres at 0..width-1)."""
    return 255 * min(max(x, 0.0), width - 1) / (width - 1)


# ----------------------------------------------------------------------------------------------- llava


@pytest.mark.parametrize("size", SIZES)
def test_llava_grid_positions_and_box_match_processor(vlms, size):
    vlm = get(vlms, "llava")
    image = gradient_image(*size)
    batch = vlm.inputs([image])
    layout = image_layout(vlm.model, batch, processor=vlm.processor, original_sizes=[size])

    expected = placeholder_positions(batch, vlm.image_token_id)
    assert expected.numel() == 36  # (48 / 8) ** 2, CLS dropped
    assert torch.equal(layout.positions, expected)
    [tile] = layout.tiles
    assert (tile.rows, tile.cols) == (6, 6)
    assert torch.equal(tile.positions, expected)
    assert layout.image_size == size
    assert layout.extra_positions.numel() == 0

    # The box says which original x each processed column shows: check against the processed pixels.
    left, _, right, _ = tile.box
    red = unnormalize(batch["pixel_values"][0], vlm.processor)[0]  # [48, 48]
    for column in (4, 24, 43):
        x = left + (column + 0.5) * (right - left) / 48 - 0.5
        assert abs(red[24, column] - expected_red(x, size[0])) < 4


def test_llava_box_hand_numbers():
    from neuronscope.models.layouts.llava import processed_box

    crop = dict(do_pad=False, do_resize=True, size={"shortest_edge": 48}, do_center_crop=True, crop=(48, 48))
    # 60x40 -> 72x48, crop starts at (72 - 48) // 2 = 12 resized px = 10 original px
    assert processed_box((60, 40), **crop) == pytest.approx((10.0, 0.0, 50.0, 40.0))
    # 30x70 -> 48x112, crop starts at 32 resized px = 20 original px
    assert processed_box((30, 70), **crop) == pytest.approx((0.0, 20.0, 30.0, 50.0))
    pad = dict(crop, do_pad=True)
    # 60x40 padded to 60x60 with 10 px above: the square shows y in [-10, 50)
    assert processed_box((60, 40), **pad) == pytest.approx((0.0, -10.0, 60.0, 50.0))


def test_llava_pad_to_square_box_matches_pixels():
    vlm = tiny_llava()
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}, do_pad=True
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=vlm.processor.tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    image = gradient_image(40, 60)  # tall: padded left and right
    batch = processor(text=["<image>Hi"], images=[image], return_tensors="pt")
    layout = image_layout(vlm.model, batch, processor=processor, original_sizes=[image.size])
    box = layout.tiles[0].box
    assert box == pytest.approx((-10.0, 0.0, 50.0, 60.0))
    red = unnormalize(batch["pixel_values"][0], processor)[0]
    for column in (12, 24, 35):  # inside the image part of the square
        x = box[0] + (column + 0.5) * (box[2] - box[0]) / 48 - 0.5
        assert abs(red[24, column] - expected_red(x, 40)) < 4
    with torch.no_grad():
        vlm.model(**batch)


def test_llava_full_strategy_keeps_cls_outside_the_grid():
    vlm = tiny_llava(strategy="full")
    batch = vlm.inputs([gradient_image(60, 40)])
    layout = image_layout(vlm.model, batch)
    expected = placeholder_positions(batch, vlm.image_token_id)
    assert expected.numel() == 37
    assert torch.equal(layout.extra_positions, expected[:1])
    assert torch.equal(layout.tiles[0].positions, expected[1:])
    with torch.no_grad():
        vlm.model(**batch)


def test_llava_left_padding_and_several_images_per_row(vlms):
    vlm = get(vlms, "llava")
    images = [[gradient_image(60, 40)], [gradient_image(30, 70), gradient_image(50, 50)]]
    batch = vlm.inputs(images)
    assert batch["attention_mask"][0, 0] == 0  # row 0 is left-padded
    for row in (0, 1):
        layout = image_layout(vlm.model, batch, row, original_sizes=[im.size for im in images[row]])
        expected = placeholder_positions(batch, vlm.image_token_id, row)
        assert torch.equal(layout.positions, expected)
        assert [t.image_index for t in layout.tiles] == list(range(len(images[row])))
        assert torch.equal(torch.cat([t.positions for t in layout.tiles]), expected)
    with torch.no_grad():
        out = vlm.model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape


# ------------------------------------------------------------------------------------------ llava_next


def _pack_oracle(vlm, image_hw: tuple[int, int]) -> torch.Tensor:
    """The model's own pack_image_features on labelled features: value = crop * 1000 + token, newline = -1."""
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    config = vlm.model.config
    n_crops = image_size_to_num_patches(
        list(image_hw), config.image_grid_pinpoints, config.vision_config.image_size
    )
    labels = torch.arange(n_crops)[:, None] * 1000 + torch.arange(16)[None, :]
    packed, _ = vlm.model.model.pack_image_features(
        [labels[..., None].float()],
        torch.tensor([image_hw]),
        vision_feature_select_strategy="default",
        image_newline=torch.tensor([-1.0]),
    )
    return packed[0][:, 0]


@pytest.mark.parametrize("size", SIZES + [(33, 95), (90, 20)])
def test_llava_next_anyres_matches_processor_and_model_packing(vlms, size):
    vlm = get(vlms, "llava_next")
    width, height = size
    batch = vlm.inputs([gradient_image(*size)])
    layout = image_layout(vlm.model, batch, processor=vlm.processor)
    expected = placeholder_positions(batch, vlm.image_token_id)
    processor_count = vlm.processor._get_num_multimodal_tokens(image_sizes=[(height, width)])[
        "num_image_tokens"
    ][0]
    assert expected.numel() == processor_count
    assert torch.equal(layout.positions, expected)
    assert tokens_per_image((height, width), vlm.numbers["pinpoints"], 32, 8) == processor_count
    assert layout.image_size == size

    base, high = layout.tiles
    assert (base.kind, base.rows, base.cols) == ("base", 4, 4)
    assert high.kind == "highres"
    assert layout.newline_positions.numel() == high.rows
    assert 16 + high.rows * high.cols + high.rows == processor_count

    packed = _pack_oracle(vlm, (height, width))
    assert packed.numel() == processor_count
    assert torch.all(packed[layout.token_index(layout.newline_positions)] == -1)
    assert torch.equal(packed[layout.token_index(base.positions)], torch.arange(16).float())
    # High-res cells: decode each cell's canvas coordinates; they must form the same grid, shifted.
    _, best_w = select_best_resolution([height, width], vlm.numbers["pinpoints"])
    n_crop_cols = best_w // 32
    values = packed[layout.token_index(high.positions)].long().view(high.rows, high.cols)
    crop, token = values // 1000 - 1, values % 1000
    canvas_row = (crop // n_crop_cols) * 4 + token // 4
    canvas_col = (crop % n_crop_cols) * 4 + token % 4
    rows = torch.arange(high.rows)[:, None].expand_as(canvas_row)
    cols = torch.arange(high.cols)[None, :].expand_as(canvas_col)
    assert len(set((canvas_row - rows).flatten().tolist())) == 1
    assert len(set((canvas_col - cols).flatten().tolist())) == 1

    # The high-res box against the pixels: stitch the crops back into the canvas and read each kept cell's
    # centre; where that centre falls inside the image its colour must match the box's original x / y.
    best_h, best_w = select_best_resolution([height, width], vlm.numbers["pinpoints"])
    n_h, n_w = best_h // 32, best_w // 32
    crops = torch.stack(
        [unnormalize_tensor(p, vlm.processor) for p in batch["pixel_values"][0, 1 : 1 + n_h * n_w]]
    )
    canvas = crops.view(n_h, n_w, 3, 32, 32).permute(2, 0, 3, 1, 4).reshape(3, n_h * 32, n_w * 32)
    row0, col0 = int((canvas_row - rows)[0, 0]), int((canvas_col - cols)[0, 0])
    left, top, right, bottom = high.box
    checked = 0
    for r in range(high.rows):
        for c in range(high.cols):
            x = left + (c + 0.5) * (right - left) / high.cols - 0.5
            y = top + (r + 0.5) * (bottom - top) / high.rows - 0.5
            if not (1 <= x <= width - 2 and 1 <= y <= height - 2):
                continue
            pixel = canvas[
                :, (row0 + r) * 8 + 3 : (row0 + r) * 8 + 5, (col0 + c) * 8 + 3 : (col0 + c) * 8 + 5
            ]
            assert abs(float(pixel[0].mean()) - expected_red(x, width)) < 8
            assert abs(float(pixel[1].mean()) - expected_red(y, height)) < 8
            checked += 1
    assert checked > 0
    with torch.no_grad():
        vlm.model(**batch)


# -------------------------------------------------------------------------------------------- qwen2_vl


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("size", SIZES)
def test_qwen_grid_matches_image_grid_thw_and_pixels(vlms, family, size):
    vlm = get(vlms, family)
    width, height = size
    batch = vlm.inputs([gradient_image(*size)])
    layout = image_layout(vlm.model, batch, original_sizes=[size])
    _, grid_h, grid_w = batch["image_grid_thw"][0].tolist()
    expected = placeholder_positions(batch, vlm.image_token_id)
    assert expected.numel() == grid_h * grid_w // 4
    assert torch.equal(layout.positions, expected)
    [tile] = layout.tiles
    assert (tile.rows, tile.cols) == (grid_h // 2, grid_w // 2)
    assert tile.box == (0.0, 0.0, float(width), float(height))

    # Pixel oracle: merged token j is made of patches 4j..4j+3; their mean colour says where the token sits.
    image_processor = vlm.processor.image_processor
    patches = batch["pixel_values"].view(-1, 3, 2, 4, 4)
    mean = torch.tensor(image_processor.image_mean)[None, :, None, None, None]
    std = torch.tensor(image_processor.image_std)[None, :, None, None, None]
    rgb = ((patches * std + mean) * 255).mean(dim=(2, 3, 4)).view(-1, 4, 3).mean(dim=1)  # [tokens, 3]
    cells = rgb[layout.token_index(tile.positions)].view(tile.rows, tile.cols, 3)
    for r in range(tile.rows):
        for c in range(tile.cols):
            x = (c + 0.5) / tile.cols * width - 0.5
            y = (r + 0.5) / tile.rows * height - 0.5
            assert abs(cells[r, c, 0] - expected_red(x, width)) < 8
            assert abs(cells[r, c, 1] - expected_red(y, height)) < 8
    with torch.no_grad():
        vlm.model(**batch)


def test_qwen_several_images_and_rows(vlms):
    vlm = get(vlms, "qwen2_vl")
    images = [[gradient_image(60, 40)], [gradient_image(30, 70), gradient_image(100, 100)]]
    batch = vlm.inputs(images)
    grids = batch["image_grid_thw"].tolist()
    layout = image_layout(vlm.model, batch, 1)
    assert [(t.rows, t.cols) for t in layout.tiles] == [(h // 2, w // 2) for _, h, w in grids[1:]]
    assert torch.equal(layout.positions, placeholder_positions(batch, vlm.image_token_id, 1))
    with torch.no_grad():
        vlm.model(**batch)


# -------------------------------------------------------------------------------------------- idefics3


@pytest.mark.parametrize("size", SIZES + [(20, 20), (64, 20)])
def test_idefics3_crops_match_processor_rows_cols_and_pixel_shuffle(vlms, size):
    vlm = get(vlms, "idefics3")
    width, height = size
    image = gradient_image(*size)
    batch = vlm.inputs([[image]])
    info = vlm.processor.image_processor(images=[[image]], return_row_col_info=True)
    n_rows, n_cols = info["rows"][0][0], info["cols"][0][0]

    with_tokenizer = image_layout(vlm.model, batch, processor=vlm.processor, original_sizes=[size])
    without_tokenizer = image_layout(vlm.model, batch, original_sizes=[size])
    for layout in (with_tokenizer, without_tokenizer):
        crops = [t for t in layout.tiles if t.kind == "tile"]
        assert len(crops) == n_rows * n_cols
        assert [(t.tile_row, t.tile_col) for t in crops] == [
            (r, c) for r in range(n_rows) for c in range(n_cols)
        ]
        assert [t.kind for t in layout.tiles][-1] == "global"
        assert all((t.rows, t.cols) == (4, 4) for t in layout.tiles)
        expected = placeholder_positions(batch, vlm.image_token_id)
        assert expected.numel() == 16 * (n_rows * n_cols + 1)
        assert torch.equal(layout.positions, expected)
    assert [t.positions.tolist() for t in with_tokenizer.tiles] == [
        t.positions.tolist() for t in without_tokenizer.tiles
    ]

    # Crop boxes against the crops' pixels (tiles appear in the same order as the processor's sub-images).
    for index, tile in enumerate(with_tokenizer.tiles):
        red = unnormalize(batch["pixel_values"][0, index], vlm.processor)[0]
        left, _, right, _ = tile.box
        x = (left + right) / 2 - 0.5
        assert abs(red.mean() - expected_red(x, width)) < 10
    with torch.no_grad():
        vlm.model(**batch)


def test_idefics3_pixel_shuffle_is_row_major_over_cells(vlms):
    vlm = get(vlms, "idefics3")
    # 8x8 patches labelled by index, embed dim 1: output token j holds the 2x2 block of cell (j // 4, j % 4).
    patches = torch.arange(64).float().view(1, 64, 1)
    shuffled = vlm.model.model.connector.pixel_shuffle(patches, 2)[0]  # [16, 4]
    for j in range(16):
        r, c = divmod(j, 4)
        block = {(2 * r + i) * 8 + (2 * c + k) for i in range(2) for k in range(2)}
        assert set(shuffled[j].long().tolist()) == block


# ---------------------------------------------------------------------------------------- instructblip


def test_instructblip_has_no_spatial_map(vlms):
    vlm = get(vlms, "instructblip")
    batch = vlm.inputs([gradient_image(60, 40)])
    layout = image_layout(vlm.model, batch)
    assert not layout.has_spatial_map
    assert layout.tiles == []
    assert "no spatial map" in layout.reason
    assert torch.equal(layout.positions, placeholder_positions(batch, vlm.image_token_id))
    assert layout.n_image_tokens == 4
    with pytest.raises(InputError, match="no spatial map"):
        values_on_grid(torch.zeros(4), layout)
    with torch.no_grad():
        vlm.model(**batch)


# ---------------------------------------------------------------------------------------------- errors


def test_text_only_model_is_a_clear_error():
    with pytest.raises(UnsupportedModelError, match="text-only"):
        image_layout(LlamaConfig(), {"input_ids": torch.zeros(1, 3, dtype=torch.long)})


def test_unknown_vlm_family_names_the_supported_ones():
    from transformers import VipLlavaConfig  # a VLM family without a layout reader (PaliGemma now has one)

    with pytest.raises(UnsupportedModelError, match="llava_next.*qwen2_vl"):
        image_layout(VipLlavaConfig(), {"input_ids": torch.zeros(1, 3, dtype=torch.long)})


def test_row_without_image_is_a_clear_error(vlms):
    vlm = get(vlms, "llava")
    batch = vlm.inputs([[gradient_image(60, 40)], []], texts=["<image>Describe.", "No image here."])
    image_layout(vlm.model, batch, 0)
    with pytest.raises(NeuronscopeError, match="row 1 .*no image tokens"):
        image_layout(vlm.model, batch, 1)


# ------------------------------------------------------------- real checkpoint sizes, hand-built batches


def hand_batch(*segments: list[int]) -> dict:
    ids = torch.tensor([sum(segments, [])])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_llava_1_5_documented_grids():
    from transformers import LlavaConfig

    config = LlavaConfig()  # CLIP ViT-L/14 at 336 px, like llava-1.5
    image = config.image_token_id
    layout = image_layout(config, hand_batch([1, 5, 6], [image] * 576, [7]), original_sizes=[(640, 480)])
    assert (layout.tiles[0].rows, layout.tiles[0].cols) == (24, 24)
    assert layout.tiles[0].positions[0] == 3
    # shortest edge 480 -> 336: 448 x 336, center crop starts 56 resized px = 80 original px from the left
    assert layout.tiles[0].box == pytest.approx((80.0, 0.0, 560.0, 480.0))

    config_224 = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "image_size": 224, "patch_size": 14}
    )
    layout = image_layout(config_224, hand_batch([1], [image] * 256))
    assert (layout.tiles[0].rows, layout.tiles[0].cols) == (16, 16)


def test_llava_next_documented_anyres_numbers():
    from transformers import LlavaNextConfig, LlavaNextImageProcessorPil, LlavaNextProcessor

    config = LlavaNextConfig()  # 336 px tiles, patch 14, llava-v1.6 pinpoints
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": 336},
            crop_size={"height": 336, "width": 336},
            image_grid_pinpoints=config.image_grid_pinpoints,
        ),
        tokenizer=tiny_llava().processor.tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    # 640x480: best pinpoint 672x672 (2x2 crops, 48x48 canvas); unpadding keeps 36 of 48 rows.
    count = processor._get_num_multimodal_tokens(image_sizes=[(480, 640)])["num_image_tokens"][0]
    assert count == 576 + 36 * 48 + 36 == 2340
    batch = hand_batch([1, 2], [config.image_token_id] * count, [3])
    batch["image_sizes"] = torch.tensor([[480, 640]])
    layout = image_layout(config, batch)
    base, high = layout.tiles
    assert (base.rows, base.cols, high.rows, high.cols) == (24, 24, 36, 48)
    assert layout.newline_positions.numel() == 36
    assert layout.image_size == (640, 480)
    assert json.loads(json.dumps(layout.to_dict()))["tiles"][1]["rows"] == 36


def test_qwen2_vl_documented_grid():
    from transformers import Qwen2VLConfig

    config = Qwen2VLConfig()
    batch = hand_batch([1, 151652], [config.image_token_id] * 391, [151653, 5])
    batch["image_grid_thw"] = torch.tensor([[1, 34, 46]])  # patches of 14 px: a 476 x 644 resized image
    layout = image_layout(config, batch)
    assert (layout.tiles[0].rows, layout.tiles[0].cols) == (17, 23)


@pytest.mark.parametrize(
    "crop_rows, crop_cols",
    [(0, 0), (1, 2), (2, 1), (2, 3)],
)
def test_idefics3_documented_crops_from_token_layout(crop_rows, crop_cols):
    from transformers import Idefics3Config

    config = Idefics3Config(vision_config={"image_size": 364, "patch_size": 14}, scale_factor=2)
    image, fake, global_img, newline = config.image_token_id, 10, 11, 12
    run = [image] * 169  # (364 / 14 / 2) ** 2

    segments: list[list[int]] = [[1, 2]]
    for r in range(crop_rows):
        for c in range(crop_cols):
            segments += [[fake, 100 + 6 * r + c], run]
        segments.append([newline])
    segments += [[newline] if crop_rows else [], [fake, global_img], run, [fake, 5]]
    layout = image_layout(config, hand_batch(*segments), original_sizes=[(600, 400)])
    crops = [t for t in layout.tiles if t.kind == "tile"]
    assert [(t.tile_row, t.tile_col) for t in crops] == [
        (r, c) for r in range(crop_rows) for c in range(crop_cols)
    ]
    assert all((t.rows, t.cols) == (13, 13) for t in layout.tiles)
    if crops:
        assert crops[-1].box == pytest.approx(
            (600 * (crop_cols - 1) / crop_cols, 400 * (crop_rows - 1) / crop_rows, 600, 400)
        )
    assert layout.tiles[-1].kind == "global" and layout.tiles[-1].box == (0.0, 0.0, 600.0, 400.0)


def test_smolvlm_uses_the_idefics3_layout_and_runs():
    """SmolVLM's processor needs the num2words package (not installed here): the batch is built by hand
    in the processor's documented text format, tokenized with a local tokenizer."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    from helpers.tiny_vlms import char_tokenizer

    markers = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = char_tokenizer(["<fake_token_around_image>", "<image>", "<global-img>", *markers])
    fake, run = "<fake_token_around_image>", "<image>" * 16
    text = (
        "Hi "
        + f"{fake}<row_1_col_1>{run}{fake}<row_1_col_2>{run}\n"
        + f"\n{fake}<global-img>{run}{fake}"
        + "ok"
    )
    batch = tok([text], return_tensors="pt")
    config = SmolVLMConfig(
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 4,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
        scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = SmolVLMForConditionalGeneration(config).eval()
    layout = image_layout(model, batch, original_sizes=[(64, 32)])
    assert [(t.kind, t.tile_row, t.tile_col) for t in layout.tiles] == [
        ("tile", 0, 0),
        ("tile", 0, 1),
        ("global", None, None),
    ]
    assert layout.tiles[1].box == (32.0, 0.0, 64.0, 32.0)
    assert torch.equal(layout.positions, placeholder_positions(batch, config.image_token_id))
    batch["pixel_values"] = torch.rand(1, 3, 3, 32, 32)
    batch["pixel_attention_mask"] = torch.ones(1, 3, 32, 32, dtype=torch.bool)
    with torch.no_grad():
        model(**batch)
