"""Invariance experiments: overlaps by hand, cross-image matrices, region invariance against a model whose image
tokens are all equal (a shuffle is then a no-op) and against the pipeline's own sets, semantic sensitivity on
planted value vectors."""

from __future__ import annotations

import pytest
import torch

from helpers.pipeline_vlms import chat_vlm
from helpers.tiny_vlms import gradient_image
from neuronscope.models import get_adapter
from neuronscope.workflows.invariance import (
    cross_image_invariance,
    pairwise_overlaps,
    region_invariance,
    semantic_sensitivity,
    set_overlap,
    token_matches,
)
from neuronscope.workflows.multimodal.pipeline import find_multimodal_neurons
from neuronscope.workflows.multimodal.results import MultimodalNeurons

IMAGES = [gradient_image(40, 30), gradient_image(30, 40).rotate(180)]


def test_set_overlap_by_hand():
    a = torch.tensor([[0, 1], [0, 2], [1, 3]])
    b = torch.tensor([[1, 3], [0, 2]])
    assert set_overlap(a, b) == {"intersection": 2, "overlap": 1.0, "jaccard": 2 / 3}
    assert set_overlap(a, b, d_ff=4) == {"intersection": 2, "overlap": 1.0, "jaccard": 2 / 3}
    assert set_overlap(torch.tensor([5, 6]), torch.tensor([7]))["jaccard"] == 0.0
    overlap, jaccard = pairwise_overlaps([torch.tensor([1, 2]), torch.tensor([2, 3]), torch.tensor([1, 2])])
    assert overlap.tolist() == [[1.0, 0.5, 1.0], [0.5, 1.0, 0.5], [1.0, 0.5, 1.0]]
    assert jaccard[0, 1] == pytest.approx(1 / 3)


def test_cross_image_invariance_on_a_hand_made_result():
    pairs = [{"index": 0, "concept": "dog"}, {"index": 0, "concept": "cat"}, {"index": 1, "concept": "dog"},
             {"index": 2, "concept": "dog"}]
    flat = torch.tensor([[1, 2, 3], [7, 8, 9], [3, 2, 10], [11, 12, 13]])
    result = MultimodalNeurons([], pairs, torch.ones(4, 3), flat, n_layers=2, d_ff=10)
    found = cross_image_invariance(result, "dog", k=2)  # sets {1,2}, {3,2}, {11,12}
    assert found.images == [0, 1, 2]
    assert found.jaccard[0, 1] == pytest.approx(1 / 3) and found.jaccard[0, 2] == 0.0
    assert found.mean_jaccard == pytest.approx((1 / 3) * 2 / 6)
    assert found.mean_overlap == pytest.approx(0.5 * 2 / 6)


@pytest.fixture(scope="module")
def found_llava():
    vlm = chat_vlm("llava", seed=5)
    vlm.model.to(torch.float64)
    from neuronscope.workflows.multimodal.scoring import caption_and_score

    _, _, records, _ = caption_and_score(vlm.model, vlm.processor, IMAGES, concepts=["\x00"], top_k=1,
                                         max_new_tokens=5)
    concepts = sorted({r["caption"].split()[0] for r in records if r["caption"].strip()})
    result = find_multimodal_neurons(vlm.model, vlm.processor, IMAGES, concepts=concepts, top_k=20,
                                     max_new_tokens=5, heatmaps=0)
    assert result.pairs
    return vlm, result


def test_region_invariance_before_sets_are_the_pipeline_sets_and_a_real_shuffle_is_scored(found_llava, monkeypatch):
    vlm, result = found_llava
    from neuronscope.workflows import invariance

    class NoShuffle:  # the unshuffled re-forward must reproduce the pipeline's own top-k sets exactly
        def __init__(self, *args, **kwargs): ...
        def __enter__(self): return {}
        def __exit__(self, *args): return False

    monkeypatch.setattr(invariance, "shuffled_image_tokens", NoShuffle)
    same = region_invariance(vlm.model, vlm.processor, result, IMAGES, k=20)
    assert same.records and all(r["overlap"] == 1.0 and r["jaccard"] == 1.0 for r in same.records)
    monkeypatch.undo()
    shuffled = region_invariance(vlm.model, vlm.processor, result, IMAGES, k=20, seeds=[0, 1])
    assert len(shuffled.records) == 2 * len(result.pairs)
    for record in shuffled.records:
        assert record["overlap"] == pytest.approx(record["intersection"] / 20)
    summary = shuffled.as_dict()
    assert 0.0 <= summary["jaccard"] < 1.0 and set(summary["per_concept"]) == set(result.concepts)  # it did move


def test_region_invariance_is_exactly_one_when_all_image_tokens_are_equal():
    vlm = chat_vlm("llava", seed=6)
    model = vlm.model.to(torch.float64)
    projector = model.model.multi_modal_projector
    with torch.no_grad():
        projector.linear_2.weight.zero_()  # every image token becomes the same vector: shuffling changes nothing
    result = find_multimodal_neurons(model, vlm.processor, IMAGES[:1], concepts=["\x00"], top_k=5,
                                     max_new_tokens=4, heatmaps=0)
    caption = result.captions[0]
    word = caption["caption"].split()[0]
    result = find_multimodal_neurons(model, vlm.processor, IMAGES[:1], concepts=[word], top_k=5,
                                     max_new_tokens=4, heatmaps=0)
    found = region_invariance(model, vlm.processor, result, IMAGES[:1], k=5, seeds=[0, 1, 2])
    assert [r["jaccard"] for r in found.records] == [1.0, 1.0, 1.0]


def test_models_without_a_grid_are_skipped_with_the_reason():
    vlm = chat_vlm("instructblip")
    result = find_multimodal_neurons(vlm.model, vlm.processor, IMAGES[:1], concepts=["\x00"], top_k=5,
                                     max_new_tokens=3, heatmaps=0)
    result.captions[0]["targets"] = [{"concept": "x", "token_id": 5, "step": 0}]
    found = region_invariance(vlm.model, vlm.processor, result, IMAGES[:1], k=5)
    assert not found.records and "query" in found.skipped[0]["reason"]


def test_semantic_sensitivity_on_planted_value_vectors():
    vlm = chat_vlm("llava", seed=7)
    model, tokenizer = vlm.model, vlm.processor.tokenizer
    adapter = get_adapter(model)
    x, q = tokenizer.convert_tokens_to_ids("x"), tokenizer.convert_tokens_to_ids("q")
    down = adapter.module(1, adapter.family.down).weight  # [d_model, d_ff]: column i is w_i
    with torch.no_grad():
        down[:, 3] = 50 * adapter.unembedding()[x]
        down[:, 4] = 50 * adapter.unembedding()[q]
    found = semantic_sensitivity(model, vlm.processor, torch.tensor([[1, 3], [1, 4]]), "x", k=1)
    assert found.tokens == [["x"], ["q"]]
    assert found.hits.tolist() == [True, False] and found.rate == 0.5
    assert semantic_sensitivity(model, vlm.processor, torch.tensor([[1, 4]]), "x", ["q"], k=1).rate == 1.0


def test_token_matches_rules():
    assert token_matches("▁Dog", ["dog"]) and token_matches("Ġdog", ["dog", "puppy"])
    assert not token_matches("dogs", ["dog"])
    assert token_matches(" gir", ["giraffe"], first_pieces=[" gir"])
    assert not token_matches("  ", ["dog"])


def test_a_caption_holding_the_image_token_is_skipped_with_the_reason():
    vlm = chat_vlm("llava")
    token = vlm.model.config.image_token_id
    caption = {"index": 0, "id": "image-0", "skipped": None, "caption": "?", "generated_ids": [5, token, 6],
               "targets": [{"concept": "x", "token_id": 5, "step": 0}]}
    result = MultimodalNeurons([caption], [], torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long), 2, 64,
                               meta={"prompt": "Describe.", "assistant_prefix": "An image of"})
    found = region_invariance(vlm.model, vlm.processor, result, IMAGES[:1], k=3)
    assert not found.records and "placeholder" in found.skipped[0]["reason"]
