"""Integration: the shipped shapes VLM loads through the stock Hugging Face classes and does what its card says."""

from __future__ import annotations

import json

import pytest
import torch

from neuronscope.bundled import (
    CAPTION_PREFIX,
    CAPTION_PROMPT,
    GRID_SIZE,
    SHAPES_VLM_PATH,
    caption_for,
    facts_dataset,
    load_shapes_vlm,
    render_scene,
    sample_scenes,
    sums_dataset,
)
from neuronscope.bundled.train import (
    build_tokenizer,
    caption_scenes,
    caption_word_accuracy,
    next_token_answers,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shapes_vlm():
    return load_shapes_vlm()


def _caption_messages(image=None):
    image_item = {"type": "image"} if image is None else {"type": "image", "image": image}
    return [
        {"role": "user", "content": [image_item, {"type": "text", "text": CAPTION_PROMPT}]},
        {"role": "assistant", "content": [{"type": "text", "text": CAPTION_PREFIX}]},
    ]


def test_loads_through_the_stock_llava_classes(shapes_vlm):
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    model, processor = shapes_vlm
    assert isinstance(model, LlavaForConditionalGeneration) and not model.training
    assert isinstance(processor, LlavaProcessor)
    assert model.config.vision_config.model_type == "clip_vision_model"
    assert model.config.text_config.model_type == "llama"
    # the image processor is the PIL/numpy one: it works without torchvision
    assert type(processor.image_processor).__name__ in ("CLIPImageProcessorPil", "CLIPImageProcessor")
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    size_mb = sum(f.stat().st_size for f in SHAPES_VLM_PATH.iterdir()) / 1e6
    assert size_mb < 8


def test_shipped_tokenizer_is_the_one_train_py_builds(shapes_vlm):
    _, processor = shapes_vlm
    assert processor.tokenizer.get_vocab() == build_tokenizer().get_vocab()
    summary = json.loads((SHAPES_VLM_PATH / "training_summary.json").read_text())
    assert summary["held_out"]["colour_word"] >= 0.99


def test_image_tokens_in_input_ids_equal_the_vision_grid(shapes_vlm):
    model, processor = shapes_vlm
    image = render_scene(sample_scenes(1, seed=0, split="test")[0])
    inputs = processor.apply_chat_template(
        _caption_messages(image),
        continue_final_message=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    image_positions = inputs["input_ids"][0] == model.config.image_token_id
    assert int(image_positions.sum()) == GRID_SIZE**2 == 64
    assert inputs["pixel_values"].shape == (1, 3, 64, 64)
    # and the vision tower yields exactly that many features (CLS dropped, as in LLaVA-1.5)
    with torch.no_grad():
        features = model.get_image_features(pixel_values=inputs["pixel_values"])
    features = features.pooler_output if hasattr(features, "pooler_output") else features
    features = features[0] if isinstance(features, (list, tuple)) else features
    assert features.reshape(-1, model.config.text_config.hidden_size).shape[0] == GRID_SIZE**2
    # the text form of the template is the LLaVA-1.5 layout with BOS added by the tokenizer
    text = processor.apply_chat_template(_caption_messages(), continue_final_message=True, tokenize=False)
    assert text == f"USER: <image>\n{CAPTION_PROMPT}\nASSISTANT: {CAPTION_PREFIX}"
    assert inputs["input_ids"][0, 0] == processor.tokenizer.bos_token_id


def test_greedy_held_out_captions_name_the_right_colours_and_shapes(shapes_vlm):
    model, processor = shapes_vlm
    scenes = sample_scenes(8, seed=7, split="test")
    captions = caption_scenes(model, processor, scenes)
    assert all(c.startswith(CAPTION_PREFIX + " a ") for c in captions)
    scores = caption_word_accuracy(captions, scenes)
    # model card, 1000 held-out images: colour words 1.00, shape words 0.63, exact captions 0.50
    assert scores["colour_word"] >= 0.95, (scores, captions)
    assert scores["shape_word"] >= 0.5, (scores, captions)
    # the number of objects is always right (count of "and")
    assert [c.count(" and ") for c in captions] == [caption_for(s).count(" and ") for s in scenes]


def test_generate_through_the_plain_processor_call_matches_the_helper(shapes_vlm):
    model, processor = shapes_vlm
    scene = sample_scenes(1, seed=2, split="test")[0]
    text = processor.apply_chat_template(_caption_messages(), continue_final_message=True, tokenize=False)
    inputs = processor(text=text, images=render_scene(scene), return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    continuation = processor.tokenizer.decode(
        output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert f"{CAPTION_PREFIX} {continuation.strip()}" == caption_scenes(model, processor, [scene])[0]


def test_text_knowledge_sums_and_cloze_facts(shapes_vlm):
    model, processor = shapes_vlm
    sums = sums_dataset()
    predicted = next_token_answers(model, processor.tokenizer, [s.prompt for s in sums])
    assert sum(p == s.answer for p, s in zip(predicted, sums, strict=True)) / len(sums) >= 0.95
    facts = facts_dataset()
    predicted = next_token_answers(model, processor.tokenizer, [f.prompt for f in facts])
    assert sum(p == f.answer for p, f in zip(predicted, facts, strict=True)) / len(facts) >= 0.95


def test_multiple_choice_on_held_out_wordings_is_well_above_chance(shapes_vlm):
    from neuronscope.bundled import mcqa_dataset

    model, processor = shapes_vlm
    records = mcqa_dataset("test", n_variants=3)
    prompts = [s for r in records for s in r.sentences]
    letters = [label for r in records for label in r.obj_label]
    predicted = next_token_answers(model, processor.tokenizer, prompts)
    accuracy = sum(p == t for p, t in zip(predicted, letters, strict=True)) / len(letters)
    assert accuracy >= 0.5, accuracy  # chance is 0.25; the card says 0.70


def test_the_shipped_summary_records_the_fine_tune_and_the_base_run_it_started_from():
    from neuronscope.bundled.base_lm import shipped_config
    from neuronscope.bundled.train import TrainConfig

    summary = json.loads((SHAPES_VLM_PATH / "training_summary.json").read_text())
    # the shipped weights: a further stage 3 with the patch-word loss (MODEL_CARD.md, Training)
    assert summary["config"]["vision_pretrain_steps"] == summary["config"]["text_pretrain_steps"] == 0
    assert summary["config"]["patch_word_loss"] > 0 and summary["config"]["init_from"]
    # base_lm rebuilds the base run's stage 2: its config is the from-scratch recipe (the defaults, as the card says)
    config = shipped_config(SHAPES_VLM_PATH / "training_summary.json")
    defaults = TrainConfig()
    assert (config.vision_pretrain_steps, config.text_pretrain_steps, config.text_mix, config.seed) == (
        defaults.vision_pretrain_steps, defaults.text_pretrain_steps, defaults.text_mix, defaults.seed)
    assert config.patch_word_loss == 0.0 and config.init_from == ""
    assert any(row.get("stage") == "text" for row in summary["base"]["history"])
