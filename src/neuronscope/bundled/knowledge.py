"""What the bundled model knows besides pictures: visual questions about scenes, text facts in five domains, their
multiple-choice questions, and sums.

Text-only knowledge lives in five domains (``DOMAINS``): colours of things, shapes of things and sides of
polygons, arithmetic, a made-up geography (capitals of invented countries) and animals (sounds, legs). Each fact
has a cloze prompt (``"The capital of Zorbia is"`` -> ``"Mirel"``) and a multiple-choice question; MCQA prompts come
in several variants (instruction wording and option order; the answer letter moves with the order). Sums are
``"3+5="`` -> ``"8"`` for all single-digit pairs. Deterministic, like :mod:`.world`.

Example:
    >>> len(sums_dataset())
    45
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from neuronscope.bundled.world import (
    CAPTION_PREFIX,
    CAPTION_PROMPT,
    COLOURS,
    NUMBER_WORDS,
    SHAPES,
    SIZES,
    Scene,
    _rng,
    sample_scene,
)
from neuronscope.errors import InputError

# ---------------------------------------------------------------------------------------------------- VQA


@dataclass(frozen=True)
class VQAExample:
    """A question about a scene and its one-word answer."""

    scene: Scene
    question: str
    answer: str


def vqa_for(scene: Scene, rng: random.Random) -> VQAExample:
    """One question about ``scene`` with its answer, drawn from ``rng``.

    Kinds: colour of a shape, shape of a colour, number of shapes, size of a shape, presence of a shape
    (yes/no) and, with two shapes, where a shape is (left/right).
    """
    obj = rng.choice(scene.objects)
    kinds = ["colour", "shape", "count", "size", "exists"]
    if len(scene.objects) == 2:
        kinds.append("where")
    kind = rng.choice(kinds)
    if kind == "colour":
        return VQAExample(scene, f"What colour is the {obj.shape}?", obj.colour)
    if kind == "shape":
        return VQAExample(scene, f"What shape is {obj.colour}?", obj.shape)
    if kind == "count":
        return VQAExample(scene, "How many shapes are there?", NUMBER_WORDS[len(scene.objects)])
    if kind == "size":
        return VQAExample(scene, f"Is the {obj.shape} big or small?", obj.size)
    if kind == "exists":
        shape = rng.choice(SHAPES)
        answer = "yes" if scene.object_with_shape(shape) is not None else "no"
        return VQAExample(scene, f"Is there a {shape}?", answer)
    side = "left" if obj is scene.objects[0] else "right"
    return VQAExample(scene, f"Where is the {obj.shape}?", side)


def vqa_dataset(n: int, seed: int = 0, split: str = "train") -> list[VQAExample]:
    """``n`` (scene, question, answer) triples, deterministic in ``(seed, split)``."""
    rng = _rng("vqa", seed, split)
    return [vqa_for(sample_scene(rng), rng) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class Fact:
    """One piece of text-only knowledge.

    ``prompt`` is a cloze ending just before ``answer`` (``"The capital of Zorbia is"`` -> ``"Mirel"``);
    ``question`` is the same fact as a question for MCQA; ``relation`` groups facts whose answers are
    interchangeable distractors for each other.
    """

    domain: str
    relation: str
    subject: str
    prompt: str
    question: str
    answer: str


def _a(word: str) -> str:
    """``word`` with its indefinite article: "a dog", "an owl"."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _colour_facts() -> list[Fact]:
    things = {
        "banana": "yellow", "lemon": "yellow", "sun": "yellow", "chick": "yellow",
        "grass": "green", "leaf": "green", "frog": "green", "lime": "green",
        "sky": "blue", "sea": "blue", "sapphire": "blue", "blueberry": "blue",
        "blood": "red", "tomato": "red", "strawberry": "red", "cherry": "red",
        "snow": "white", "milk": "white", "cloud": "white", "swan": "white",
        "grape": "purple", "plum": "purple", "violet": "purple", "lavender": "purple",
    }  # fmt: skip
    return [
        Fact(
            "colours",
            "colour_of",
            thing,
            f"The colour of the {thing} is",
            f"What colour is the {thing}?",
            colour,
        )
        for thing, colour in things.items()
    ]


def _shape_facts() -> list[Fact]:
    things = {
        "wheel": "circle", "coin": "circle", "plate": "circle", "ring": "circle",
        "window": "square", "tile": "square", "chessboard": "square", "napkin": "square",
        "pyramid": "triangle", "sail": "triangle", "pizza slice": "triangle", "warning sign": "triangle",
        "starfish": "star", "badge": "star", "sparkle": "star", "asterisk": "star",
    }  # fmt: skip
    facts = [
        Fact(
            "shapes",
            "shape_of",
            thing,
            f"The shape of the {thing} is a",
            f"What shape is the {thing}?",
            shape,
        )
        for thing, shape in things.items()
    ]
    sides = {"triangle": "three", "square": "four", "pentagon": "five", "hexagon": "six", "octagon": "eight"}
    facts += [
        Fact("shapes", "sides_of", polygon, f"The number of sides of {_a(polygon)} is",
             f"How many sides does {_a(polygon)} have?", count)
        for polygon, count in sides.items()
    ]  # fmt: skip
    return facts


def _arithmetic_facts() -> list[Fact]:
    pairs = [(1, 2), (2, 5), (3, 3), (4, 1), (5, 4), (6, 2), (7, 1), (2, 8), (3, 6), (4, 4),
             (5, 5), (6, 7), (7, 8), (8, 3), (9, 2), (9, 9), (1, 6), (8, 8), (3, 9), (6, 6)]  # fmt: skip
    return [
        Fact("arithmetic", "sum", f"{a}+{b}", f"The sum of {a} and {b} is", f"What is {a}+{b}?", str(a + b))
        for a, b in pairs
    ]


def _geography_facts() -> list[Fact]:
    capitals = {
        "Zorbia": "Mirel", "Kaltoria": "Venn", "Drusk": "Olapa", "Mevaria": "Tesk", "Quenland": "Borro",
        "Ostrel": "Fiva", "Pallune": "Gorran", "Veskia": "Humo", "Tarnia": "Lisk", "Brevonia": "Uldo",
        "Imarra": "Sevet", "Nolvar": "Crin",
    }  # fmt: skip
    return [
        Fact("geography", "capital_of", country, f"The capital of {country} is",
             f"What is the capital of {country}?", capital)
        for country, capital in capitals.items()
    ]  # fmt: skip


def _animal_facts() -> list[Fact]:
    sounds = {"cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "lion": "roar",
              "owl": "hoot", "pig": "oink", "horse": "neigh", "mouse": "squeak"}  # fmt: skip
    legs = {"dog": "four", "bird": "two", "spider": "eight", "ant": "six", "snake": "zero", "horse": "four",
            "chicken": "two", "beetle": "six", "octopus": "eight", "fish": "zero"}  # fmt: skip
    facts = [
        Fact("animals", "sound_of", animal, f"The sound {_a(animal)} makes is", f"What sound does {_a(animal)} make?",
             sound)
        for animal, sound in sounds.items()
    ]  # fmt: skip
    facts += [
        Fact("animals", "legs_of", animal, f"The number of legs of {_a(animal)} is",
             f"How many legs does {_a(animal)} have?", count)
        for animal, count in legs.items()
    ]  # fmt: skip
    return facts


DOMAINS: tuple[str, ...] = ("colours", "shapes", "arithmetic", "geography", "animals")


def facts_dataset(domain: str | None = None) -> list[Fact]:
    """All 97 facts, or those of one ``domain`` from ``DOMAINS``; the model was trained on all of them.

    Example:
        >>> next(f for f in facts_dataset("geography") if f.subject == "Zorbia").answer
        'Mirel'
    """
    facts = _colour_facts() + _shape_facts() + _arithmetic_facts() + _geography_facts() + _animal_facts()
    if domain is None:
        return facts
    if domain not in DOMAINS:
        raise InputError(f"unknown domain {domain!r}; choose one of {DOMAINS}")
    return [f for f in facts if f.domain == domain]


# ---------------------------------------------------------------------------------------------------- MCQA

LETTERS: tuple[str, ...] = ("A", "B", "C", "D")

# Instruction wordings; the first four are trained on, the last two are held out for the "test" split.
MCQA_TEMPLATES: tuple[str, ...] = (
    "Answer the question by choosing one option.\nQuestion: {question}\n{options}\nAnswer:",
    "Choose the correct answer.\n{question}\n{options}\nAnswer:",
    "Question: {question}\nPick A, B, C or D.\n{options}\nAnswer:",
    "Read the question and select the right letter.\nQuestion: {question}\n{options}\nAnswer:",
    "Which option is correct?\n{question}\n{options}\nAnswer:",
    "Here is a question with four options.\nQuestion: {question}\n{options}\nAnswer:",
)
TRAIN_TEMPLATES: tuple[int, ...] = (0, 1, 2, 3)
TEST_TEMPLATES: tuple[int, ...] = (4, 5)


@dataclass(frozen=True)
class MCQARecord:
    """One multiple-choice query with its prompt variants.

    ``sentences[k]`` is variant k's full prompt (ending in ``"Answer:"``) and ``obj_label[k]`` its answer letter,
    the format of the QRNCA reference JSON (``{"sentences": [...], "obj_label": [...], "relation_name": ...}``).
    """

    id: str
    domain: str
    relation: str
    question: str
    answer: str
    sentences: list[str] = field(default_factory=list)
    obj_label: list[str] = field(default_factory=list)
    options: list[list[str]] = field(default_factory=list)


def _distractor_pool(fact: Fact, facts: list[Fact]) -> list[str]:
    pool = sorted({f.answer for f in facts if f.relation == fact.relation and f.answer != fact.answer})
    if fact.relation == "sum":  # numbers near the answer are the plausible wrong sums
        value = int(fact.answer)
        pool = [str(v) for v in range(max(0, value - 4), value + 5) if v != value]
    elif fact.relation in ("sides_of", "legs_of"):
        pool = [w for w in NUMBER_WORDS if w != fact.answer]
    return pool


def mcqa_prompt(question: str, options: list[str], template: int = 0) -> str:
    """The MCQA prompt for ``options`` (in A, B, C, D order) with instruction wording ``MCQA_TEMPLATES[template]``.

    Example:
        >>> print(mcqa_prompt("What is 1+2?", ["3", "4", "5", "6"], template=1))
        Choose the correct answer.
        What is 1+2?
        A. 3
        B. 4
        C. 5
        D. 6
        Answer:
    """
    if len(options) != len(LETTERS):
        raise InputError(f"an MCQA prompt needs {len(LETTERS)} options, got {len(options)}")
    lines = "\n".join(f"{letter}. {option}" for letter, option in zip(LETTERS, options, strict=False))
    return MCQA_TEMPLATES[template].format(question=question, options=lines)


QUESTION_TEMPLATE = "Question: {question}\nAnswer:"


def question_prompt(question: str) -> str:
    """A fact's question to be answered in words (no options): ``Question: ...\nAnswer:`` -> ``yellow``."""
    return QUESTION_TEMPLATE.format(question=question)


def mcqa_variant(
    fact: Fact, rng: random.Random, template: int, facts: list[Fact]
) -> tuple[str, str, list[str]]:
    """One prompt variant of ``fact``: (prompt, answer letter, options), options shuffled by ``rng``."""
    distractors = rng.sample(_distractor_pool(fact, facts), 3)
    options = [fact.answer, *distractors]
    rng.shuffle(options)
    return mcqa_prompt(fact.question, options, template), LETTERS[options.index(fact.answer)], options


def mcqa_dataset(
    split: str = "test", n_variants: int = 3, seed: int = 0, domain: str | None = None
) -> list[MCQARecord]:
    """One record per fact with ``n_variants`` prompt variants (wording and option order vary).

    ``split="train"`` uses the trained instruction wordings; ``split="test"`` uses the two held-out wordings
    (alternating) with freshly drawn distractors and option orders. Facts themselves are shared: they are the
    model's knowledge, as a language model's facts are.

    Example:
        >>> rec = mcqa_dataset("test", n_variants=3)[0]
        >>> len(rec.sentences), rec.obj_label[0] in "ABCD"
        (3, True)
    """
    facts = facts_dataset()
    rng = _rng("mcqa", seed, split)
    templates = TRAIN_TEMPLATES if split == "train" else TEST_TEMPLATES
    records = []
    for index, fact in enumerate(facts):
        record = MCQARecord(
            f"{fact.domain}-{index:03d}", fact.domain, fact.relation, fact.question, fact.answer
        )
        for k in range(n_variants):
            template = templates[k % len(templates)] if split == "test" else rng.choice(templates)
            prompt, letter, options = mcqa_variant(fact, rng, template, facts)
            record.sentences.append(prompt)
            record.obj_label.append(letter)
            record.options.append(options)
        records.append(record)
    if domain is not None:
        if domain not in DOMAINS:
            raise InputError(f"unknown domain {domain!r}; choose one of {DOMAINS}")
        records = [r for r in records if r.domain == domain]
    return records


# ---------------------------------------------------------------------------------------------------- sums


@dataclass(frozen=True)
class SumExample:
    """``prompt = "3+5="``, ``answer = "8"``."""

    a: int
    b: int
    prompt: str
    answer: str


def sums_dataset() -> list[SumExample]:
    """All 100 single-digit sums ``"a+b="`` -> ``"a+b"``; the model was trained on all of them.

    Example:
        >>> sums_dataset()[35].prompt, sums_dataset()[35].answer
        ('3+5=', '8')
    """
    return [SumExample(a, b, f"{a}+{b}=", str(a + b)) for a in range(10) for b in range(10)]


# ---------------------------------------------------------------------------------------------------- vocabulary


def vocabulary_texts() -> list[str]:
    """Every text the world can produce, for building the word-level tokenizer's vocabulary."""
    texts = [CAPTION_PROMPT, CAPTION_PREFIX, "and a", " ".join(COLOURS), " ".join(SHAPES), " ".join(SIZES)]
    texts += [" ".join(NUMBER_WORDS), "yes no left right", "What colour is the ?", "What shape is ?"]
    texts += ["How many shapes are there?", "Is the big or small?", "Is there a ?", "Where is the ?"]
    texts += list(MCQA_TEMPLATES) + [" ".join(LETTERS), "A. B. C. D."]
    for fact in facts_dataset():
        texts += [fact.prompt, fact.question, fact.answer]
    texts += [s.prompt + s.answer for s in sums_dataset()]
    texts += [str(v) for v in range(0, 25)]
    return texts
