"""The patch-word loss of stage 3, against a hand computation: for every image token whose patch an object covers,
minus the mean log-probability of that object's colour and shape words, found by scanning the scene itself."""

from __future__ import annotations

import random

import torch

from neuronscope.bundled import world
from neuronscope.bundled.training.batches import PatchWords, image_batch, model_inputs, patch_word_loss
from neuronscope.bundled.training.build import build_model, build_processor
from neuronscope.bundled.training.config import TrainConfig

TINY = TrainConfig(hidden=32, intermediate=64, vision_hidden=32, vision_intermediate=64, layers=2, vision_layers=1)


def test_patch_word_loss_is_the_mean_over_object_patches_of_their_words_log_probability():
    processor = build_processor()
    tokenizer = processor.tokenizer
    model = build_model(tokenizer, TINY).eval()
    rng = random.Random(3)
    state = rng.getstate()
    batch = image_batch(processor, rng, 3, 0.5, with_patch_labels=True)
    rng.setstate(state)
    scenes = []
    for _ in range(3):  # the same draws as image_batch: a scene, then the caption/VQA choice (and a question)
        scenes.append(world.sample_scene(rng))
        if rng.random() >= 0.5:
            from neuronscope.bundled import knowledge

            knowledge.vqa_for(scenes[-1], rng)
    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits
        loss = patch_word_loss(logits, batch, PatchWords.of(tokenizer))
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    terms = []
    for row, scene in enumerate(scenes):
        positions = [t for t, token in enumerate(batch["input_ids"][row].tolist()) if token == image_id]
        assert len(positions) == world.GRID_SIZE**2
        coverage = world.patch_coverage(scene).reshape(len(scene.objects), -1)
        for patch, position in enumerate(positions):
            best = int(coverage[:, patch].argmax())
            if coverage[best, patch] < 0.1:  # background: no term
                continue
            obj = scene.objects[best]
            log_probs = torch.log_softmax(logits[row, position], dim=-1)
            colour, shape = tokenizer.convert_tokens_to_ids([obj.colour, obj.shape])
            terms.append(-(log_probs[colour] + log_probs[shape]) / 2)
    assert terms
    torch.testing.assert_close(loss, torch.stack(terms).mean())


def test_patch_labels_draw_nothing_from_the_stream():
    processor = build_processor()
    plain, labelled = random.Random(5), random.Random(5)
    a = image_batch(processor, plain, 2, 0.5)
    b = image_batch(processor, labelled, 2, 0.5, with_patch_labels=True)
    assert plain.random() == labelled.random()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert b["patch_shapes"].shape == b["patch_colours"].shape == (2, world.GRID_SIZE**2)
