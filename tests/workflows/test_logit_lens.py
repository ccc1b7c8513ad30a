"""``recipe logit-lens``: the grids' top tokens equal the normed hidden states unembedded by hand; on the bundled
model the localisation table equals counts made by hand from output_hidden_states and the scenes' masks."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from helpers.pipeline_vlms import chat_vlm
from helpers.tiny_vlms import gradient_image
from neuronscope.errors import OptionError
from neuronscope.inputs import encode_images
from neuronscope.models.image_layout import image_layout
from neuronscope.workflows import run
from neuronscope.workflows.logit_lens import drawn_stages
from neuronscope.workflows.specs.vision import LogitLensOptions


def _stage_logits(model, batch, positions):
    """``[L + 1, P, vocab]``: decoder inputs through the final norm and lm_head; the last = the model's logits."""
    with torch.no_grad():
        out = model(**batch.inputs, output_hidden_states=True)
        hidden = torch.stack(out.hidden_states[:-1])[:, 0, positions]
        earlier = model.lm_head(model.model.language_model.norm(hidden)).float()
        return torch.cat([earlier, out.logits[0, positions].float()[None]])


def test_grids_hold_the_hand_computed_top_tokens(tmp_path):
    vlm = chat_vlm("llava", seed=2)
    folder = tmp_path / "llava"
    vlm.model.save_pretrained(folder)
    vlm.processor.save_pretrained(folder)
    images = tmp_path / "images"
    images.mkdir()
    gradient_image(40, 30).save(images / "a.png")
    (images / "broken.png").write_bytes(b"nope")
    result = run("recipe logit-lens", model=str(folder), images=images, prompt="What?", assistant_prefix="",
                 words="a,b", leading_space=False, k=2, out=tmp_path / "lens", drawn=1)
    out = tmp_path / "lens"
    assert result.metrics["images_done"] == 1 and result.metrics["images_skipped"] == 1
    grid = json.loads((out / "lens" / "0.json").read_text())
    batch = encode_images(vlm.processor, [gradient_image(40, 30)], "What?")
    layout = image_layout(vlm.model, batch.inputs, 0)
    logits = _stage_logits(vlm.model, batch, layout.positions)
    tokenizer = vlm.processor.tokenizer
    assert grid["grid"] == [6, 6] and len(grid["stages"]) == 3
    for stage, found in enumerate(grid["stages"]):
        expected = [tokenizer.decode([int(t)]) for t in logits[stage].argmax(-1)]
        assert found["top"] == expected, found["stage"]
    assert (out / "lens" / "0.embeddings.png").is_file() and (out / "lens" / "0.layer_1.png").is_file()
    assert (out / "tables" / "lens_word_ranks.csv").is_file() and (out / "report.html").is_file()
    assert "broken.png" in (out / "skipped.json").read_text()


def test_bundled_localisation_equals_counts_by_hand(tmp_path):
    from neuronscope.bundled import COLOURS, load_shapes_vlm, render_scene, sample_scenes
    from neuronscope.bundled.world import CAPTION_PREFIX, CAPTION_PROMPT, patch_coverage

    result = run("recipe logit-lens", bundled_scenes=3, out=tmp_path / "lens", drawn=0)
    with open(tmp_path / "lens" / "tables" / "lens_localisation.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    model, processor = load_shapes_vlm()
    ids = torch.tensor([processor.tokenizer.convert_tokens_to_ids(c) for c in COLOURS])
    right = torch.zeros(5)
    on_object = 0
    scene_word_on_background = torch.zeros(5)
    background = 0
    for scene in sample_scenes(3, seed=0, split="test"):
        batch = encode_images(processor, [render_scene(scene)], CAPTION_PROMPT, assistant_prefix=CAPTION_PREFIX)
        positions = image_layout(model, batch.inputs, 0).positions  # the 8 x 8 grid, row-major
        top = _stage_logits(model, batch, positions).argmax(-1)  # [5, 64]
        coverage = torch.from_numpy(patch_coverage(scene)).flatten(1)
        for obj, cover in zip(scene.objects, coverage, strict=True):
            mask = cover >= 0.5
            on_object += int(mask.sum())
            right += (top[:, mask] == ids[COLOURS.index(obj.colour)]).sum(1)
        empty = coverage.max(0).values == 0
        background += int(empty.sum())
        scene_ids = ids[[COLOURS.index(o.colour) for o in scene.objects]]
        scene_word_on_background += torch.isin(top[:, empty], scene_ids).sum(1)
    assert [row["stage"] for row in table] == ["embeddings", "layer 0", "layer 1", "layer 2", "layer 3"]
    for stage, row in enumerate(table):
        assert int(row["object_patches"]) == on_object and int(row["background_patches"]) == background
        assert float(row["object_top1_right"]) == pytest.approx(float(right[stage]) / on_object)
        assert float(row["background_top1_scene_word"]) == pytest.approx(
            float(scene_word_on_background[stage]) / background)
    assert result.metrics["words"] == list(COLOURS)


def test_options_are_checked_before_any_model(tmp_path):
    with pytest.raises(OptionError, match="--images .* or --bundled-scenes"):
        LogitLensOptions(out=tmp_path / "x")
    with pytest.raises(OptionError, match="not both"):
        LogitLensOptions(images=tmp_path, bundled_scenes=2, out=tmp_path / "x")
    with pytest.raises(OptionError, match="--model"):
        LogitLensOptions(images=tmp_path, out=tmp_path / "x")
    with pytest.raises(OptionError, match="--stages"):
        LogitLensOptions(bundled_scenes=2, stages="0,x", out=tmp_path / "x")
    assert drawn_stages(3) == [0, 1, 2] and drawn_stages(9, 3) == [0, 4, 8]
