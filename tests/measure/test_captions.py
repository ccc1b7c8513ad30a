"""concept_removal: each row equals captioning by hand under the same interventions (an independent oracle),
random sets keep the located set's layers, and bad input is refused before any captioning."""

from __future__ import annotations

import pytest
import torch

from neuronscope.errors import InputError
from neuronscope.measure.baselines import random_neurons_like
from neuronscope.measure.captions import caption_images, concept_removal, removal_records
from neuronscope.measure.metrics import concept_rate
from neuronscope.trace import intervene, suppress

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bundled():
    from neuronscope import bundled

    model, processor = bundled.load_shapes_vlm()
    scenes = bundled.sample_scenes(6, seed=3, split="test")
    return bundled, model, processor, scenes, [bundled.render_scene(s) for s in scenes]


def _by_hand(model, processor, images, prompt, prefix, neurons=None):
    from neuronscope.inputs import encode_images, generate

    batch = encode_images(processor, images, prompt, assistant_prefix=prefix)
    with intervene(model, [] if neurons is None else suppress(neurons, positions="last")):
        return generate(model, processor, batch, max_new_tokens=12).texts


def test_rows_equal_captioning_by_hand(bundled):
    world, model, processor, scenes, images = bundled
    colour = scenes[0].objects[0].colour
    shows = {colour: [i for i, s in enumerate(scenes) if s.object_with_colour(colour)]}
    neurons = {colour: torch.tensor([[3, 5], [3, 9], [2, 1], [1, 7]])}
    rows = concept_removal(model, processor, images, shows, neurons, (2, 4), prompt=world.CAPTION_PROMPT,
                           assistant_prefix=world.CAPTION_PREFIX, d_ff=512, words=[*world.COLOURS, *world.SHAPES],
                           n_random=1, seed=7)
    assert [(r.concept, r.k, r.images) for r in rows] == [(colour, 2, len(shows[colour])), (colour, 4, len(shows[colour]))]
    base = _by_hand(model, processor, images, world.CAPTION_PROMPT, world.CAPTION_PREFIX)
    assert base == caption_images(model, processor, images, world.CAPTION_PROMPT, assistant_prefix=world.CAPTION_PREFIX)
    others = [w for w in (*world.COLOURS, *world.SHAPES) if w != colour]
    for row in rows:
        chosen = neurons[colour][: row.k]
        after = _by_hand(model, processor, images, world.CAPTION_PROMPT, world.CAPTION_PREFIX, chosen)
        assert row.before == concept_rate([base[i] for i in shows[colour]], colour)
        assert row.after_located == concept_rate([after[i] for i in shows[colour]], colour)
        change = sum(abs(concept_rate(after, w) - concept_rate(base, w)) for w in others) / len(others)
        assert row.other_words_change_located == pytest.approx(change)
        draw = random_neurons_like(chosen, 512, n_draws=1, seed=7 + row.k, exclude_given=True)[0]
        assert sorted(draw[:, 0].tolist()) == sorted(chosen[:, 0].tolist())  # same layers as the located set
        random_after = _by_hand(model, processor, images, world.CAPTION_PROMPT, world.CAPTION_PREFIX, draw)
        assert row.after_random == concept_rate([random_after[i] for i in shows[colour]], colour)
    records = removal_records(rows)
    assert set(records[0]) >= {"concept", "k", "before", "after_located", "after_random"}


def test_bad_input_is_refused_before_captioning(bundled):
    world, model, processor, _, images = bundled
    kwargs = {"prompt": world.CAPTION_PROMPT, "d_ff": 512}
    with pytest.raises(InputError, match="no located neurons"):
        concept_removal(model, processor, images, {"red": [0]}, {}, (1,), **kwargs)
    with pytest.raises(InputError, match="fewer located neurons"):
        concept_removal(model, processor, images, {"red": [0]}, {"red": torch.tensor([[0, 1]])}, (1, 5), **kwargs)
