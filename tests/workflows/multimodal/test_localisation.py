"""Heatmap localisation on the bundled shapes world, against a hand computation: the activations read by plain
forward pre-hooks on the stock ``down_proj`` modules at the image-token positions, averaged over the top-k
neurons, upsampled by separable linear interpolation (``np.interp``, edge values outside), cut at the 95th
percentile, and the share of the cut on the object's pixels counted by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronscope.errors import InputError
from neuronscope.workflows.multimodal.localisation import (
    concept_images,
    concept_object,
    heatmap_localisation,
    mask_on_object,
    object_heatmaps,
)


def test_mask_on_object_counts_the_masked_pixels_on_the_object():
    mask = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)  # 4 pixels
    truth = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=bool)  # 2 of them on the object
    assert mask_on_object(mask, truth) == 0.5
    assert mask_on_object(np.zeros((3, 3), dtype=bool), truth) == 0.0


@pytest.fixture(scope="module")
def bundled_model():
    bundled = pytest.importorskip("neuronscope.bundled")
    try:
        model, processor = bundled.load_shapes_vlm()
    except InputError as error:
        pytest.skip(f"bundled model not available: {error}")
    torch.manual_seed(0)
    return bundled, model, processor


def _by_hand(model, processor, image, neurons, truth, k, percentile=95.0):
    """(heat min-max scaled, mask, share of the mask on ``truth``) of the mean |activation| of the first k neurons."""
    grid_size = model.config.vision_config.image_size // model.config.vision_config.patch_size
    inputs = processor(text=["USER: <image>\nDescribe the image in few words."], images=[image], return_tensors="pt")
    image_positions = inputs["input_ids"][0] == model.config.image_token_id
    assert int(image_positions.sum()) == grid_size * grid_size  # one token per patch (no CLS)
    seen = {}
    layers = model.model.language_model.layers
    hooks = [layers[layer].mlp.down_proj.register_forward_pre_hook(
        lambda module, args, layer=layer: seen.__setitem__(layer, args[0][0, image_positions].detach().clone()))
        for layer in sorted({int(n[0]) for n in neurons[:k]})]  # fmt: skip
    with torch.no_grad():
        model(**inputs)
    for hook in hooks:
        hook.remove()
    values = torch.stack([seen[int(layer)][:, int(index)] for layer, index in neurons[:k]], dim=1)
    grid = values.abs().mean(dim=1).double().numpy().reshape(grid_size, grid_size)  # patches row by row
    height, width = truth.shape
    rows = (np.arange(height) + 0.5) * grid_size / height - 0.5  # pixel centres in grid-cell units
    cols = (np.arange(width) + 0.5) * grid_size / width - 0.5
    cells = np.arange(grid_size)
    across = np.stack([np.interp(cols, cells, row) for row in grid])  # [grid_size, width]
    heat = np.stack([np.interp(rows, cells, column) for column in across.T], axis=1)  # [height, width]
    heat = (heat - heat.min()) / (heat.max() - heat.min())
    mask = heat > np.percentile(heat, percentile)
    on = sum(bool(truth[r, c]) for r, c in zip(*np.nonzero(mask), strict=True)) / int(mask.sum())
    return heat, mask, on


@pytest.mark.integration
def test_object_heatmaps_match_the_hand_computation(bundled_model):
    bundled, model, processor = bundled_model
    from neuronscope.bundled.world import object_masks

    scene = bundled.sample_scenes(3, seed=5, split="test")[2]
    image = bundled.render_scene(scene)
    colour = scene.objects[-1].colour
    number = concept_object(scene, colour)
    assert scene.objects[number].colour == colour and concept_object(scene, "no-such-word") is None
    truth = object_masks(scene)[number] > 0.5
    generator = torch.Generator().manual_seed(3)
    layers = torch.randint(0, model.config.text_config.num_hidden_layers, (12,), generator=generator)
    indices = torch.randint(0, model.config.text_config.intermediate_size, (12,), generator=generator)
    neurons = torch.stack([layers, indices], dim=1)
    maps = object_heatmaps(model, processor, scene, image, 0, colour, neurons, [12, 1, 5, 50])
    assert sorted(maps.heat) == [1, 5, 12]  # k above the number of neurons is dropped
    assert maps.obj.shape == truth.shape and (maps.obj == truth).all()
    for k in (1, 5, 12):
        heat, mask, on = _by_hand(model, processor, image, neurons, truth, k)
        np.testing.assert_allclose(maps.heat[k], heat, atol=1e-5)
        assert (maps.masks[k] == mask).all(), k
        assert maps.on_object[k] == pytest.approx(on, abs=1e-12)
    other = next(c for c in bundled.COLOURS if concept_object(scene, c) is None)
    assert object_heatmaps(model, processor, scene, image, 0, other, neurons, [5]) is None


@pytest.mark.integration
def test_heatmap_localisation_pools_the_hand_computed_shares(bundled_model):
    bundled, model, processor = bundled_model
    from neuronscope.bundled.world import object_masks
    from neuronscope.workflows.multimodal.pipeline import find_multimodal_neurons

    scenes = bundled.sample_scenes(8, seed=11, split="test")
    images = [bundled.render_scene(scene) for scene in scenes]
    located = find_multimodal_neurons(model, processor, images, prompt=bundled.CAPTION_PROMPT,
                                      assistant_prefix=bundled.CAPTION_PREFIX, concepts=["red", "blue", "circle"],
                                      top_k=50, batch_size=8, max_new_tokens=12, heatmaps=0)  # fmt: skip
    assert located.concepts, "the bundled model named none of the concepts"
    scores = heatmap_localisation(model, processor, scenes, images, located, k=20, images_per_concept=2)
    pooled = {"colours": [], "shapes": []}
    for concept in located.concepts:
        in_pair_order = list(dict.fromkeys(located.pairs[row]["index"] for row in located.pair_rows(concept)))
        having = [i for i in in_pair_order if concept_object(scenes[i], concept) is not None][:2]
        assert concept_images(located, scenes, concept, 2) == having
        neurons = located.concept_neurons(concept, 20)
        shares, areas = [], []
        for i in having:
            truth = object_masks(scenes[i])[concept_object(scenes[i], concept)] > 0.5
            shares.append(_by_hand(model, processor, images[i], neurons, truth, len(neurons))[2])
            areas.append(truth.mean())
        row = scores["concepts"][concept]
        assert row["images"] == len(having)
        assert row["on_object"] == pytest.approx(np.mean(shares), abs=1e-4)  # rounded to 4 places
        assert row["area"] == pytest.approx(np.mean(areas), abs=1e-4)
        pooled["colours" if concept in bundled.COLOURS else "shapes"].extend(shares)
    for kind, shares in pooled.items():
        if shares:
            assert scores[kind]["images"] == len(shares)
            assert scores[kind]["on_object"] == pytest.approx(np.mean(shares), abs=1e-4)
        else:
            assert kind not in scores
    only = heatmap_localisation(model, processor, scenes, images, located, k=20, images_per_concept=2,
                                concepts=[located.concepts[0], "not-located"])  # fmt: skip
    assert list(only["concepts"]) == [located.concepts[0]]
