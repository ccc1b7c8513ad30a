"""The synthetic world of the bundled model: shape images and their captions (its text knowledge — VQA, facts,
MCQA, sums — is in :mod:`.knowledge`).

Everything here is deterministic: the same ``(n, seed, split)`` always gives the same scenes, questions and
prompts, on every machine. ``split="train"`` and ``split="test"`` draw from different random streams, so test
images are held out from training (new positions, sizes, shades and combinations drawn independently).

Images are ``IMAGE_SIZE x IMAGE_SIZE`` (64 x 64) RGB pictures of one or two shapes on a dark background. With two
shapes, one sits in the left half and one in the right half, their shapes and colours differ, and the caption
names them left to right: ``"An image of a red circle and a blue square"``.

Text-only knowledge lives in five domains (``DOMAINS``): colours of things, shapes of things and sides of
polygons, arithmetic, a made-up geography (capitals of invented countries) and animals (sounds, legs). Each fact
has a cloze prompt (``"The capital of Zorbia is"`` -> ``"Mirel"``) and a multiple-choice question; MCQA prompts come
in several variants (instruction wording and option order; the answer letter moves with the order). Sums are
``"3+5="`` -> ``"8"`` for all single-digit pairs.

Example:
    >>> from neuronscope.bundled.world import sample_scenes, caption_for, render_scene
    >>> scene = sample_scenes(1, seed=0, split="test")[0]
    >>> caption_for(scene).startswith("An image of a ")
    True
    >>> render_scene(scene).size
    (64, 64)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from neuronscope.errors import InputError

IMAGE_SIZE = 64
PATCH_SIZE = 8
GRID_SIZE = IMAGE_SIZE // PATCH_SIZE  # the vision grid is GRID_SIZE x GRID_SIZE image tokens

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "white")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
SIZES: tuple[str, ...] = ("small", "big")
SPLITS: tuple[str, ...] = ("train", "test")

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (40, 180, 60),
    "blue": (45, 85, 235),
    "yellow": (235, 215, 45),
    "purple": (150, 55, 200),
    "white": (240, 240, 240),
}
# radius of the shape's bounding circle, in pixels, per size word
SIZE_RADIUS: dict[str, tuple[int, int]] = {"small": (8, 9), "big": (12, 14)}

CAPTION_PROMPT = "Describe the image in few words."
CAPTION_PREFIX = "An image of"

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")


# ---------------------------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class ShapeObject:
    """One shape in a scene: what it is and where it is drawn (centre ``x, y`` and ``radius`` in pixels)."""

    shape: str
    colour: str
    size: str
    x: int
    y: int
    radius: int
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    """A picture's content: 1-2 objects ordered left to right, and a background grey level."""

    objects: tuple[ShapeObject, ...]
    background: int = 40

    def object_with_shape(self, shape: str) -> ShapeObject | None:
        """The object of this shape, or None (shapes in one scene are distinct)."""
        return next((o for o in self.objects if o.shape == shape), None)

    def object_with_colour(self, colour: str) -> ShapeObject | None:
        """The object of this colour, or None (colours in one scene are distinct)."""
        return next((o for o in self.objects if o.colour == colour), None)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}; use 'train' or 'test' (held out)")


def _rng(kind: str, seed: int, split: str) -> random.Random:
    """A random stream per (kind, seed, split); string seeds hash with SHA-512, stable across runs and machines."""
    _check_split(split)
    return random.Random(f"neuronscope-world:{kind}:{split}:{seed}")


def _jitter(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, c + rng.randint(-15, 15))) for c in rgb)
    return (r, g, b)


def _sample_object(rng: random.Random, shape: str, colour: str, x_range: tuple[int, int]) -> ShapeObject:
    size = rng.choice(SIZES)
    radius = rng.randint(*SIZE_RADIUS[size])
    x = rng.randint(*x_range)
    y = rng.randint(15, IMAGE_SIZE - 15)
    return ShapeObject(shape, colour, size, x, y, radius, _jitter(COLOUR_RGB[colour], rng))


def sample_scene(rng: random.Random) -> Scene:
    """Draw one scene from ``rng``: one shape (40%) or two (60%) with distinct shapes and colours."""
    n_objects = 1 if rng.random() < 0.4 else 2
    shapes = rng.sample(SHAPES, n_objects)
    colours = rng.sample(COLOURS, n_objects)
    if n_objects == 1:
        objects = (_sample_object(rng, shapes[0], colours[0], (15, IMAGE_SIZE - 15)),)
    else:
        # left centre <= 18 and right centre >= 46 keep two big shapes (radius <= 14) apart
        objects = (
            _sample_object(rng, shapes[0], colours[0], (13, 18)),
            _sample_object(rng, shapes[1], colours[1], (46, 51)),
        )
    return Scene(objects=objects, background=rng.randint(25, 60))


def sample_scenes(n: int, seed: int = 0, split: str = "train") -> list[Scene]:
    """``n`` scenes from the ``split`` stream ("train" or held-out "test"), deterministic in ``(seed, split)``.

    Example:
        >>> [len(s.objects) for s in sample_scenes(3, seed=1, split="test")] == \
            [len(s.objects) for s in sample_scenes(3, seed=1, split="test")]
        True
    """
    rng = _rng("scenes", seed, split)
    return [sample_scene(rng) for _ in range(n)]


def _star_points(x: float, y: float, radius: float) -> list[tuple[float, float]]:
    import math

    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * 0.45
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((x + r * math.cos(angle), y + r * math.sin(angle)))
    return points


def _draw_object(draw: ImageDraw.ImageDraw, obj: ShapeObject, supersample: int, fill: object) -> None:
    x, y, r = obj.x * supersample, obj.y * supersample, obj.radius * supersample
    if obj.shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif obj.shape == "square":
        half = r * 0.8
        draw.rectangle((x - half, y - half, x + half, y + half), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(x, y - r), (x - r * 0.95, y + r * 0.75), (x + r * 0.95, y + r * 0.75)], fill=fill)
    elif obj.shape == "star":
        draw.polygon(_star_points(x, y, r * 1.1), fill=fill)
    else:
        raise InputError(f"unknown shape {obj.shape!r}; known shapes: {SHAPES}")


def render_scene(scene: Scene, supersample: int = 4) -> Image.Image:
    """Draw ``scene`` as a ``64 x 64`` RGB PIL image (drawn at ``supersample`` x size, then downsampled)."""
    big = IMAGE_SIZE * supersample
    grey = scene.background
    image = Image.new("RGB", (big, big), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, supersample, obj.rgb)
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)


def object_masks(scene: Scene, supersample: int = 4) -> list[np.ndarray]:
    """Per object, the fraction of each pixel it covers: float arrays ``[IMAGE_SIZE, IMAGE_SIZE]`` in [0, 1].

    Useful as ground truth for heatmaps: ``object_masks(scene)[k] > 0.5`` is object k's pixel mask.
    """
    big = IMAGE_SIZE * supersample
    masks = []
    for obj in scene.objects:
        image = Image.new("L", (big, big), 0)
        _draw_object(ImageDraw.Draw(image), obj, supersample, 255)
        small = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
        masks.append(np.asarray(small, dtype=np.float32) / 255.0)
    return masks


def patch_coverage(scene: Scene) -> np.ndarray:
    """Fraction of each vision-grid patch covered by each object: ``[n_objects, GRID_SIZE, GRID_SIZE]``."""
    masks = np.stack(object_masks(scene))
    n = len(scene.objects)
    return masks.reshape(n, GRID_SIZE, PATCH_SIZE, GRID_SIZE, PATCH_SIZE).mean(axis=(2, 4))


def caption_for(scene: Scene) -> str:
    """The reference caption: ``"An image of a red circle and a blue square"`` (objects left to right)."""
    names = " and ".join(f"a {o.colour} {o.shape}" for o in scene.objects)
    return f"{CAPTION_PREFIX} {names}"
