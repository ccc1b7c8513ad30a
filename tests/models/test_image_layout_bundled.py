"""The bundled VLM's image-token layout against the pixels: changing the pixels of one 8 x 8 patch changes the
visual embedding of that grid cell most (read by a plain hook on the stock language model's input). This is what
lets object masks (``bundled.world.patch_coverage``) be compared with per-token readings (logit lens, patches)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def bundled():
    from neuronscope.bundled import load_shapes_vlm

    return load_shapes_vlm()


def _visual_embeddings(model, processor, image) -> tuple[torch.Tensor, object]:
    """``([T, d] decoder input embeddings, batch)`` of one image with a fixed question."""
    from neuronscope.inputs.batch import encode_images

    batch = encode_images(processor, [image], "What colour is the circle?")
    seen = {}

    def grab(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    handle = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**batch.inputs)
    finally:
        handle.remove()
    return seen["embeds"][0], batch


def test_each_patch_of_pixels_moves_its_own_grid_cell_most(bundled):
    """On the world's plain background (on a scene with objects the vision tower's attention can move a neighbour
    of an object's edge more: 1 of 64 cells on the shipped model, so that is not asserted)."""
    from neuronscope.models.image_layout import image_layout

    model, processor = bundled
    image = Image.new("RGB", (64, 64), (40, 40, 40))
    base, batch = _visual_embeddings(model, processor, image)
    layout = image_layout(model, batch.inputs, 0, processor=processor, original_sizes=[image.size])
    tile = layout.tiles[0]
    cell_positions = layout.positions[layout.token_index(tile.positions)]  # row-major cells -> sequence positions
    patch = image.size[0] // tile.cols
    pixels = np.array(image)
    moved = []
    for row in range(tile.rows):
        for col in range(tile.cols):
            changed = pixels.copy()
            box = (slice(row * patch, (row + 1) * patch), slice(col * patch, (col + 1) * patch))
            changed[box] = 255 - changed[box]
            after, _ = _visual_embeddings(model, processor, Image.fromarray(changed))
            moved.append(int((after - base)[cell_positions].norm(dim=-1).argmax()))
    assert moved == list(range(tile.rows * tile.cols))
