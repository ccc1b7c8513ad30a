"""The synthetic world: deterministic, self-consistent, and its answers checked against independent oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neuronscope.bundled import knowledge, world
from neuronscope.errors import InputError


def test_sample_scenes_is_deterministic_and_splits_differ():
    assert world.sample_scenes(20, seed=3, split="test") == world.sample_scenes(20, seed=3, split="test")
    assert world.sample_scenes(20, seed=3, split="test") != world.sample_scenes(20, seed=3, split="train")
    assert world.sample_scenes(20, seed=3, split="test") != world.sample_scenes(20, seed=4, split="test")
    with pytest.raises(InputError, match="split"):
        world.sample_scenes(1, split="validation")


def test_render_is_deterministic_and_paints_each_object_its_colour():
    for scene in world.sample_scenes(12, seed=0, split="test"):
        image = world.render_scene(scene)
        assert image.size == (world.IMAGE_SIZE, world.IMAGE_SIZE)
        assert image.tobytes() == world.render_scene(scene).tobytes()
        pixels = np.asarray(image).astype(int)
        for obj in scene.objects:  # the centre of every shape lies well inside it
            assert np.abs(pixels[obj.y, obj.x] - np.array(obj.rgb)).max() <= 2
        assert np.abs(pixels[0, 0] - scene.background).max() <= 2  # corners are background


def test_two_object_scenes_are_ordered_left_to_right_with_distinct_shapes_and_colours():
    scenes = world.sample_scenes(200, seed=1, split="train")
    pairs = [s for s in scenes if len(s.objects) == 2]
    assert 0.4 < len(pairs) / len(scenes) < 0.8
    for scene in pairs:
        left, right = scene.objects
        assert left.x < right.x and left.x + left.radius < right.x - right.radius  # no overlap
        assert left.shape != right.shape and left.colour != right.colour


def test_caption_names_objects_in_order():
    obj = world.ShapeObject("circle", "red", "big", 15, 30, 12, (220, 35, 35))
    other = world.ShapeObject("square", "blue", "small", 48, 30, 8, (45, 85, 235))
    assert world.caption_for(world.Scene((obj, other))) == "An image of a red circle and a blue square"
    assert world.caption_for(world.Scene((other,))) == "An image of a blue square"


def test_patch_coverage_matches_shape_areas():
    # independent oracle: a circle of radius r covers pi r^2 pixels, a square of half-side 0.8 r covers (1.6 r)^2
    for shape, area in (("circle", lambda r: math.pi * r * r), ("square", lambda r: (1.6 * r) ** 2)):
        obj = world.ShapeObject(shape, "green", "big", 30, 33, 13, (40, 180, 60))
        coverage = world.patch_coverage(world.Scene((obj,)))
        assert coverage.shape == (1, world.GRID_SIZE, world.GRID_SIZE)
        covered_pixels = coverage.sum() * world.PATCH_SIZE**2
        assert covered_pixels == pytest.approx(area(13), rel=0.03)
        mask = world.object_masks(world.Scene((obj,)))[0]
        assert covered_pixels == pytest.approx(mask.sum(), rel=1e-5)


def test_vqa_answers_agree_with_the_scene():
    for example in knowledge.vqa_dataset(300, seed=2, split="test"):
        scene, question, answer = example.scene, example.question, example.answer
        if question.startswith("What colour is the "):
            assert (
                scene.object_with_shape(question.removeprefix("What colour is the ").rstrip("?")).colour
                == answer
            )
        elif question.startswith("What shape is "):
            assert (
                scene.object_with_colour(question.removeprefix("What shape is ").rstrip("?")).shape == answer
            )
        elif question.startswith("How many"):
            assert answer == ["zero", "one", "two"][len(scene.objects)]
        elif question.startswith("Is there a "):
            present = scene.object_with_shape(question.removeprefix("Is there a ").rstrip("?")) is not None
            assert answer == ("yes" if present else "no")
        elif question.startswith("Where is the "):
            obj = scene.object_with_shape(question.removeprefix("Where is the ").rstrip("?"))
            assert answer == ("left" if obj.x < world.IMAGE_SIZE / 2 else "right")
        else:
            obj = scene.object_with_shape(question.split()[2])
            assert answer == obj.size


def test_mcqa_letters_point_at_the_answer_and_test_wordings_are_held_out():
    records = knowledge.mcqa_dataset("test", n_variants=3, seed=0)
    assert records == knowledge.mcqa_dataset("test", n_variants=3, seed=0)
    assert {r.domain for r in records} == set(knowledge.DOMAINS)
    train_openings = {knowledge.MCQA_TEMPLATES[k].split("\n")[0] for k in knowledge.TRAIN_TEMPLATES}
    for record in records:
        assert len(record.sentences) == len(record.obj_label) == 3
        for prompt, letter, options in zip(record.sentences, record.obj_label, record.options, strict=True):
            assert options[knowledge.LETTERS.index(letter)] == record.answer
            assert len(set(options)) == 4
            for option_letter, option in zip(knowledge.LETTERS, options, strict=True):
                assert f"\n{option_letter}. {option}\n" in prompt
            assert prompt.endswith("Answer:") and prompt.split("\n")[0] not in train_openings
    # the answer letter moves with the option order: all four letters are used
    assert {label for r in records for label in r.obj_label} == set(knowledge.LETTERS)


def test_sums_and_facts():
    sums = knowledge.sums_dataset()
    assert len(sums) == 100 and all(int(s.answer) == s.a + s.b and s.prompt == f"{s.a}+{s.b}=" for s in sums)
    facts = knowledge.facts_dataset()
    assert {f.domain for f in facts} == set(knowledge.DOMAINS)
    for fact in knowledge.facts_dataset("arithmetic"):
        a, b = (int(x) for x in fact.subject.split("+"))
        assert int(fact.answer) == a + b
    with pytest.raises(InputError, match="domain"):
        knowledge.facts_dataset("astronomy")
