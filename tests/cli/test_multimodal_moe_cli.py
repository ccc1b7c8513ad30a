"""``neuronscope recipe multimodal`` on a tiny mixture-of-experts VLM (Qwen3-VL-MoE) saved to a folder: exit 0,
expert neurons in the files, heatmaps, report.

transformers' Qwen-VL processors load a video processor, which needs torchvision (not installed here); the test
loads the saved tokenizer, image processor and chat template without one (the processor's own class, its video
check relaxed, as ``helpers.tiny_vlms`` builds it). The model's weights and config come from the folder."""

from __future__ import annotations

import csv
import json
import string

import torch

from helpers.moe_vlm import chat_qwen3_vl_moe
from helpers.tiny_vlms import _without_video_check, gradient_image


def _image_only_processor(source, **kwargs):
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil, Qwen3VLProcessor

    processor = _without_video_check(Qwen3VLProcessor)(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(source), tokenizer=AutoTokenizer.from_pretrained(source),
        video_processor=None)
    with open(f"{source}/chat_template.json") as handle:
        processor.chat_template = json.load(handle)["chat_template"]
    return processor


def test_recipe_multimodal_on_a_saved_tiny_qwen3_vl_moe(cli, tmp_path, monkeypatch) -> None:
    import transformers

    model, processor = chat_qwen3_vl_moe(seed=3, dtype=torch.float32)
    folder = tmp_path / "qwen3_vl_moe"
    model.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": processor.chat_template}))
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", _image_only_processor)
    images = tmp_path / "images"
    images.mkdir()
    gradient_image(16, 24).save(images / "a.png")
    gradient_image(24, 24).rotate(90).save(images / "b.png")
    out = tmp_path / "mm"
    concepts = ",".join(string.ascii_letters + string.digits)  # the captions are random characters
    result = cli("recipe", "multimodal", "-m", folder, "--images", images, "--concepts", concepts, "--top-k", 20,
                 "--max-new-tokens", 5, "--heatmap-concepts", 2, "--out", out)
    assert result.exit_code == 0, result.output
    with open(out / "neurons.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and {"layer", "expert", "kind", "neuron"} <= set(rows[0])
    assert all(0 <= int(row["expert"]) < 4 and row["kind"] == "routed" for row in rows)
    concepts_file = json.loads((out / "concepts.json").read_text())
    assert concepts_file and "expert" in concepts_file[0]["neurons"][0]
    assert json.loads((out / "config.json").read_text())["layout"]["units"][0] == [0, 0, 12, 0]
    assert list(out.glob("heatmaps/*.png")) and (out / "report.html").is_file()
    assert "<th>expert</th>" in (out / "report.html").read_text()
