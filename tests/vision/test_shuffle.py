"""Image-token shuffles: a seeded permutation within each grid, applied to the language model's input."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_vlms import build_tiny_vlm, gradient_image
from neuronscope.errors import InputError
from neuronscope.models.adapter import get_adapter
from neuronscope.models.image_layout import image_layout
from neuronscope.vision import shuffle_image_embeddings, shuffle_plan, shuffled_image_tokens


def capture_inputs_embeds(model) -> tuple[list[torch.Tensor], torch.utils.hooks.RemovableHandle]:
    seen: list[torch.Tensor] = []

    def hook(_module, _args, kwargs):
        seen.append(kwargs["inputs_embeds"].detach().clone())

    handle = get_adapter(model).decoder.register_forward_pre_hook(hook, with_kwargs=True)
    return seen, handle


def test_plan_is_a_seeded_permutation_within_each_tile_leaving_newlines():
    vlm = build_tiny_vlm("llava_next")
    batch = vlm.inputs([gradient_image(60, 40)])
    layout = image_layout(vlm.model, batch)
    targets, sources = shuffle_plan(layout, seed=0)
    offset = 0
    for tile in layout.tiles:
        n = tile.positions.numel()
        assert torch.equal(targets[offset : offset + n], tile.positions)
        assert torch.equal(sources[offset : offset + n].sort().values, tile.positions.sort().values)
        offset += n
    assert not set(targets.tolist()) & set(layout.newline_positions.tolist())
    again, _ = shuffle_plan(layout, seed=0)
    assert torch.equal(shuffle_plan(layout, seed=0)[1], sources) and torch.equal(again, targets)
    assert not torch.equal(shuffle_plan(layout, seed=1)[1], sources)
    assert not torch.equal(sources, targets)
    # "image" scope mixes the base and the high-res grid of the same image.
    _, mixed = shuffle_plan(layout, seed=0, scope="image")
    base = set(layout.tiles[0].positions.tolist())
    assert set(mixed[:16].tolist()) != base


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "llava_next", "idefics3"])
def test_shuffled_forward_moves_exactly_the_image_features(family):
    vlm = build_tiny_vlm(family)
    images = [[gradient_image(60, 40)], [gradient_image(30, 70)]]
    batch = vlm.inputs(images)
    layouts = [image_layout(vlm.model, batch, row) for row in (0, 1)]

    seen, handle = capture_inputs_embeds(vlm.model)
    with torch.no_grad():
        plain = vlm.model(**batch).logits
    handle.remove()
    original = seen[0]

    with torch.no_grad(), shuffled_image_tokens(vlm.model, layouts, seed=0) as plans:
        seen, handle = capture_inputs_embeds(vlm.model)  # registered after the shuffle hook: sees its output
        shuffled_logits = vlm.model(**batch).logits
        handle.remove()
    shuffled = seen[0]

    expected = original.clone()
    for row, (targets, sources) in plans.items():
        expected[row, targets] = original[row, sources]
    assert torch.equal(shuffled, expected)
    moved = torch.zeros(original.shape[:2], dtype=torch.bool)
    for row, (targets, _) in plans.items():
        moved[row, targets] = True
    assert torch.equal(shuffled[~moved], original[~moved])
    assert not torch.equal(shuffled, original)
    assert not torch.allclose(shuffled_logits, plain)

    with torch.no_grad():  # the hook is gone after the block
        assert torch.equal(vlm.model(**batch).logits, plain)


def test_shuffle_image_embeddings_is_pure():
    embeds = torch.arange(2 * 5 * 3).float().view(2, 5, 3)
    out = shuffle_image_embeddings(embeds, 1, torch.tensor([1, 2, 3]), torch.tensor([3, 1, 2]))
    assert torch.equal(out[1, 1:4], embeds[1, [3, 1, 2]])
    assert torch.equal(out[0], embeds[0]) and torch.equal(out[1, [0, 4]], embeds[1, [0, 4]])
    assert torch.equal(embeds, torch.arange(30).float().view(2, 5, 3))


def test_no_shuffle_without_a_spatial_map():
    vlm = build_tiny_vlm("instructblip")
    layout = image_layout(vlm.model, vlm.inputs([gradient_image(40, 40)]))
    with pytest.raises(InputError, match="no spatial map"):
        shuffle_plan(layout)
