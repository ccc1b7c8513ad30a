"""Lens localisation counts and the top-patch share, against counts done by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from neuronscope.errors import InputError
from neuronscope.measure.patch_localisation import LensLocalisation, top_patches_on_object

WORDS = torch.tensor([10, 20, 30])  # token ids of three candidate words


def test_counts_by_hand_over_two_images():
    counts = LensLocalisation(["embeddings", "layer 0"], on=0.5)
    # image 1: patches 0, 1 are object A (word 0), patch 2 half object B (word 2) but below `on`, patch 3 background
    coverage = torch.tensor([[1.0, 0.6, 0.0, 0.0], [0.0, 0.0, 0.4, 0.0]])
    top1 = torch.tensor([[10, 7, 30, 30], [20, 10, 7, 10]])
    ranks = torch.tensor([
        [[0, 2, 1], [3, 1, 5], [4, 4, 0], [9, 9, 0]],
        [[1, 0, 2], [0, 3, 3], [2, 2, 2], [0, 8, 8]],
    ])
    counts.add(top1, ranks, coverage, torch.tensor([0, 2]), WORDS)
    # image 2: one object (word 1) on patch 1; patches 0 and 2 background
    counts.add(torch.tensor([[20, 20, 99], [20, 20, 20]]),
               torch.tensor([[[1, 0, 4], [2, 0, 1], [1, 1, 1]], [[1, 0, 1], [1, 0, 2], [3, 0, 4]]]),
               torch.tensor([[0.0, 0.9, 0.0]]), torch.tensor([1]), WORDS)
    rows = counts.rows()
    first, second = rows
    # embeddings: object patches (A:0, A:1, C:1) = 3; right top-1: A0 yes (10), A1 no (7), C1 yes (20) -> 2/3
    assert first["object_patches"] == 3 and first["object_top1_right"] == pytest.approx(2 / 3)
    # best among words: A0 argmin [0,2,1] = 0 yes; A1 argmin [3,1,5] = 1 no; C1 argmin [2,0,1] = 1 yes
    assert first["object_best_among_words"] == pytest.approx(2 / 3)
    assert first["object_mean_rank"] == pytest.approx((0 + 3 + 0) / 3)
    # background: image 1 patch 3 (top 30 = scene word B), image 2 patches 0 (20 = scene word) and 2 (99)
    assert first["background_patches"] == 3
    assert first["background_top1_scene_word"] == pytest.approx(2 / 3)
    assert first["background_top1_any_word"] == pytest.approx(2 / 3)
    # mean rank of each scene word on background: image 1 patch 3 words 0, 2 -> 9, 0; image 2 word 1 -> 0, 1
    assert first["background_mean_rank"] == pytest.approx((9 + 0 + 0 + 1) / 4)
    # layer 0: A0 top 20 no, A1 10 yes, C1 20 yes
    assert second["object_top1_right"] == pytest.approx(2 / 3)
    assert second["background_top1_scene_word"] == 1.0  # 10 (scene word A), then 20 and 20 (scene word)
    assert counts.images == 2


def test_empty_counts_are_nan_and_shapes_are_checked():
    counts = LensLocalisation(["embeddings"])
    assert math.isnan(counts.rows()[0]["object_top1_right"])
    with pytest.raises(InputError, match="shapes"):
        counts.add(torch.zeros(2, 4, dtype=torch.long), torch.zeros(1, 4, 3, dtype=torch.long),
                   torch.zeros(1, 4), torch.tensor([0]), WORDS)


def test_top_patches_on_object():
    scores = torch.tensor([0.5, 0.9, 0.9, 0.1])
    coverage = torch.tensor([0.0, 1.0, 0.3, 1.0])
    assert top_patches_on_object(scores, coverage, n=1) == 1.0  # the tie at 0.9 goes to patch 1
    assert top_patches_on_object(scores, coverage, n=2) == 0.5
    assert top_patches_on_object(scores, coverage, n=10) == 0.5
    with pytest.raises(InputError):
        top_patches_on_object(scores, coverage[:2])
