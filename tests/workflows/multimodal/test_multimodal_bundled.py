"""Integration on the bundled shapes VLM: the neurons found for a colour word matter for that word, more than random
neurons of the same number and layers, and their heatmaps land on the coloured object.

Measured on the shipped model (``results/bundled/suppression.json``: 48 held-out scenes, top-1000 per pair, captions
suppressed at every generated step with ``positions="last"``): zeroing a colour's top 300 of 2,048 neurons leaves
it in 0 % of its images' captions for red, green and yellow, 10 % for white, 22 % for purple and 100 % for blue
(random 300: 100 % left for all); top 100: 0-100 % left; top 10: 90-100 %. This test uses other scenes and prints its
figures. Skipped until the bundled model is in the package."""

from __future__ import annotations

import pytest
import torch

from neuronscope.errors import InputError
from neuronscope.inputs.batch import extend_batch
from neuronscope.measure.baselines import random_neurons_like
from neuronscope.measure.captions import caption_images
from neuronscope.measure.metrics import causal_effect
from neuronscope.models import get_adapter
from neuronscope.trace import intervene, suppress
from neuronscope.workflows.multimodal.pipeline import find_multimodal_neurons
from neuronscope.workflows.multimodal.scoring import encode_captioning

pytestmark = pytest.mark.slow

N_CAPTION = 300  # neurons suppressed for the caption test (of 4 x 512)
N_LOGPROB = 100  # neurons suppressed for the log-probability test
N_RANDOM = 3


@pytest.fixture(scope="module")
def found():
    bundled = pytest.importorskip("neuronscope.bundled")
    try:
        model, processor = bundled.load_shapes_vlm()
    except InputError as error:
        pytest.skip(f"bundled model not available: {error}")
    scenes = bundled.sample_scenes(48, seed=11, split="test")
    images = [bundled.render_scene(scene) for scene in scenes]
    result = find_multimodal_neurons(model, processor, images, prompt=bundled.CAPTION_PROMPT,
                                     assistant_prefix=bundled.CAPTION_PREFIX, concepts=list(bundled.COLOURS),
                                     top_k=1000, batch_size=16, max_new_tokens=12, heatmaps=0)
    return bundled, model, processor, scenes, images, result


def _captions(model, processor, images, prefix, neurons=None):
    interventions = None if neurons is None else suppress(neurons, positions="last")
    return caption_images(model, processor, images, "Describe the image in few words.", assistant_prefix=prefix,
                          interventions=interventions)


def test_the_pipeline_captions_every_image_and_finds_colour_pairs(found):
    bundled, _, _, scenes, _, result = found
    assert result.metrics["images_captioned"] == len(scenes) and result.metrics["images_skipped"] == 0
    for pair in result.pairs:  # every pair's colour is in its scene (the model's colour words are right)
        assert scenes[pair["index"]].object_with_colour(pair["concept"]) is not None


def test_suppressing_a_colours_neurons_removes_it_from_captions_more_than_random_neurons(found):
    bundled, model, processor, scenes, images, result = found
    d_ff = get_adapter(model).d_ff
    figures = {}
    for colour in result.concepts[:2]:
        having = [image for image, scene in zip(images, scenes, strict=True) if scene.object_with_colour(colour)]
        before = _captions(model, processor, having, bundled.CAPTION_PREFIX)
        located = result.concept_neurons(colour, N_CAPTION)
        effect = causal_effect(before, _captions(model, processor, having, bundled.CAPTION_PREFIX, located), colour)
        random_drops = [
            causal_effect(before, _captions(model, processor, having, bundled.CAPTION_PREFIX, draw), colour).drop
            for draw in random_neurons_like(located, d_ff, n_draws=N_RANDOM, seed=1, exclude_given=True)]
        figures[colour] = (len(having), effect.rate_before, effect.drop, random_drops)
    print(f"caption drop, top {N_CAPTION} vs random: {figures}")
    for colour, (_, rate_before, drop, random_drops) in figures.items():
        assert rate_before > 0.9, colour
        assert drop >= 0.2 - 1e-9 and drop > max(random_drops), (colour, drop, random_drops)  # 3/15 = 0.2 in floats


@torch.no_grad()
def test_suppression_lowers_the_colour_log_probability_more_than_random_neurons(found):
    bundled, model, processor, _, images, result = found
    d_ff = get_adapter(model).d_ff

    def log_prob(pair, neurons=None):
        caption = result.captions[pair["index"]]
        batch = encode_captioning(processor, [images[pair["index"]]], bundled.CAPTION_PROMPT, bundled.CAPTION_PREFIX)
        position = batch.seq_len - 1 + pair["step"]
        items = [] if neurons is None else suppress(neurons, positions=[position])
        with intervene(model, items):
            logits = model(**extend_batch(batch, [caption["generated_ids"]]).inputs).logits[0, position]
        return float(torch.log_softmax(logits.float(), -1)[pair["token_id"]])

    for colour in result.concepts[:3]:
        located = result.concept_neurons(colour, N_LOGPROB)
        draws = random_neurons_like(located, d_ff, n_draws=N_RANDOM, seed=2, exclude_given=True)
        located_change, random_change = [], []
        for row in result.pair_rows(colour):
            pair = result.pairs[row]
            base = log_prob(pair)
            located_change.append(log_prob(pair, located) - base)
            random_change.append(sum(log_prob(pair, draw) - base for draw in draws) / len(draws))
        located_mean = sum(located_change) / len(located_change)
        random_mean = sum(random_change) / len(random_change)
        print(f"{colour}: mean change of log p, top {N_LOGPROB}: {located_mean:.3f}, random: {random_mean:.3f}")
        assert located_mean < random_mean - 0.03, (colour, located_mean, random_mean)


def test_heatmaps_of_absolute_activation_land_on_the_coloured_object(found):
    import numpy as np

    from neuronscope.workflows.multimodal.heatmaps import neuron_heatmaps

    bundled, model, processor, scenes, images, result = found
    on_object, area = [], []
    for colour in result.concepts[:2]:
        neurons = result.concept_neurons(colour, 100)
        for row in result.pair_rows(colour)[:4]:
            index = result.pairs[row]["index"]
            scene = scenes[index]
            number = next(k for k, obj in enumerate(scene.objects) if obj.colour == colour)
            truth = bundled.world.object_masks(scene)[number] > 0.5
            maps = neuron_heatmaps(model, processor, images[index], neurons, single_neurons=0, ks=(100,),
                                   absolute=True, prompt=bundled.CAPTION_PROMPT,
                                   assistant_prefix=bundled.CAPTION_PREFIX)
            mask = maps.masks["mean_top100"].numpy()
            on_object.append(float(truth[mask].mean()))
            area.append(float(truth.mean()))
    print(f"95th-percentile mask pixels on the object: {np.mean(on_object):.3f} (object area {np.mean(area):.3f})")
    # measured on the shipped weights (MODEL_CARD.md, "Heatmaps"): 0.765 on the object, area 0.078; the goal of
    # issue 18 is at least half of the mask on the object
    assert np.mean(on_object) > 3 * np.mean(area)
    assert np.mean(on_object) >= 0.5


def test_important_patches_of_a_colour_question_sit_on_the_asked_shape(found):
    import numpy as np

    from neuronscope.workflows.patches import important_patches

    bundled, model, processor, scenes, images, _ = found
    hits, chance = [], []
    for scene, image in list(zip(scenes, images, strict=True))[:12]:
        obj = scene.objects[0]
        patches = important_patches(model, processor, image, f"What colour is the {obj.shape}?")
        coverage = bundled.world.patch_coverage(scene)[0].flatten()  # row-major grid cells
        order = patches.layout.token_index(patches.layout.tiles[0].positions)
        hits.append(coverage[int(patches.scores[order].argmax())] > 0.1)
        chance.append(float((coverage > 0.1).mean()))
    print(f"top patch on the asked shape: {np.mean(hits):.2f} (chance {np.mean(chance):.2f})")
    assert np.mean(hits) > 3 * np.mean(chance)
