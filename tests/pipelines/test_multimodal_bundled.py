"""Integration: on the bundled shapes VLM, the neurons found for a colour word remove that colour from the
captions when suppressed (at every generated step), more than random neurons of the same number and layers do.
Skipped until the bundled model is in the package."""

from __future__ import annotations

import pytest
import torch

from neuronscope.errors import InputError
from neuronscope.evaluate.baselines import random_neurons_like
from neuronscope.evaluate.metrics import causal_effect
from neuronscope.inputs import encode_images, generate
from neuronscope.models import get_adapter
from neuronscope.pipelines.multimodal import find_multimodal_neurons, to_model
from neuronscope.trace import intervene, suppress

pytestmark = pytest.mark.slow

N_NEURONS = 20
N_RANDOM = 5


@pytest.fixture(scope="module")
def shapes():
    bundled = pytest.importorskip("neuronscope.bundled")
    try:
        model, processor = bundled.load_shapes_vlm()
    except InputError as error:
        pytest.skip(f"bundled model not available: {error}")
    return bundled, model, processor


def _captions(model, processor, images, prefix, neurons=None):
    batch = to_model(encode_images(processor, images, "Describe the image in few words.", assistant_prefix=prefix),
                     model)
    items = [] if neurons is None else suppress(neurons, positions="last")
    with intervene(model, items):
        return generate(model, processor, batch, max_new_tokens=12).texts


def test_suppressing_a_colours_neurons_removes_it_more_than_random_neurons(shapes):
    bundled, model, processor = shapes
    torch.manual_seed(0)
    scenes = bundled.sample_scenes(48, seed=11, split="test")
    images = [bundled.render_scene(scene) for scene in scenes]
    prefix = bundled.CAPTION_PREFIX
    found = find_multimodal_neurons(model, processor, images, prompt=bundled.CAPTION_PROMPT,
                                    assistant_prefix=prefix, concepts=list(bundled.COLOURS), top_k=500,
                                    batch_size=16, max_new_tokens=12, progress=False, heatmaps=0)
    assert found.metrics["images_captioned"] == len(images)
    d_ff = get_adapter(model).d_ff
    figures = {}
    for colour in found.concepts[:3]:
        having = [image for image, scene in zip(images, scenes, strict=True) if scene.object_with_colour(colour)]
        before = _captions(model, processor, having, prefix)
        located = found.concept_neurons(colour, N_NEURONS)
        after = _captions(model, processor, having, prefix, located)
        effect = causal_effect(before, after, colour)
        random_drops = []
        for draw in random_neurons_like(located, d_ff, n_draws=N_RANDOM, seed=1, exclude_given=True):
            random_drops.append(causal_effect(before, _captions(model, processor, having, prefix, draw), colour).drop)
        figures[colour] = {"images": len(having), "rate_before": effect.rate_before, "rate_after": effect.rate_after,
                           "drop": effect.drop, "random_drop_mean": sum(random_drops) / len(random_drops),
                           "random_drop_max": max(random_drops)}
    print("bundled shapes model, suppression of", N_NEURONS, "neurons per colour:", figures)
    for colour, numbers in figures.items():
        assert numbers["rate_before"] > 0.5, (colour, numbers)
        assert numbers["drop"] > numbers["random_drop_mean"] + 0.2, (colour, numbers)
