"""Training examples of the bundled model, drawn fresh from a seeded stream, and the losses on them.

Image examples are captions or visual questions about a new scene; text examples are cloze facts, MCQA, option
matching, sums and the facts' questions answered in words. Only answer tokens count in :func:`answer_loss`;
:func:`patch_word_loss` (optional, stage 3) asks each object patch's image token to predict that object's colour and
shape words.

Example:
    >>> import random
    >>> from neuronscope.bundled import knowledge
    >>> text_example(random.Random(0), knowledge.facts_dataset(), (0, 0, 0, 1))
    ('6+6=', '12')
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from neuronscope.bundled import knowledge, world
from neuronscope.bundled.training.build import IMAGE_TOKEN
from neuronscope.bundled.training.config import TrainConfig

#: batch keys that are targets, not model inputs
TARGET_KEYS: tuple[str, ...] = ("labels", "patch_shapes", "patch_colours")


def chat_messages(question: str, with_image: bool, answer_prefix: str | None = None) -> list[dict[str, Any]]:
    """A one-turn conversation in the processor's format; ``answer_prefix`` opens the assistant turn."""
    content: list[dict[str, str]] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": question})
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if answer_prefix is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer_prefix}]})
    return messages


@lru_cache(maxsize=4096)
def chat_prompt(processor: Any, question: str) -> str:
    """The chat text of an image question, with the image token repeated once per vision-grid patch."""
    text = processor.apply_chat_template(
        chat_messages(question, True), add_generation_prompt=True, tokenize=False
    )
    n_image_tokens = world.GRID_SIZE**2
    return text.replace(IMAGE_TOKEN, IMAGE_TOKEN * n_image_tokens)  # what the processor does to the text


def encode(tokenizer: Any, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """``(input ids, labels)`` of prompt + answer + EOS; labels are -100 over the prompt."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def pad(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``labels`` and ``attention_mask`` ``[len(rows), longest]`` (training only)."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def patch_labels(scene: world.Scene, min_coverage: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per vision-grid patch (row-major), the 1-based shape and colour index of the object covering it most,
    0 for background (coverage < ``min_coverage``): two LongTensors ``[GRID_SIZE**2]``."""
    coverage = torch.from_numpy(world.patch_coverage(scene)).flatten(1)  # [n_objects, grid**2]
    best, which = coverage.max(dim=0)
    shapes = torch.tensor([world.SHAPES.index(o.shape) + 1 for o in scene.objects])[which]
    colours = torch.tensor([world.COLOURS.index(o.colour) + 1 for o in scene.objects])[which]
    background = best < min_coverage
    return shapes.masked_fill(background, 0), colours.masked_fill(background, 0)


def image_batch(
    processor: Any, rng: random.Random, size: int, caption_fraction: float, with_patch_labels: bool = False
) -> dict[str, torch.Tensor]:
    """``size`` fresh training scenes as captioning or VQA examples: input_ids, labels, mask, pixel_values, and
    with ``with_patch_labels`` each image's :func:`patch_labels` (``patch_shapes``, ``patch_colours``
    ``[size, GRID_SIZE**2]``; they draw nothing from ``rng``)."""
    rows, images, labels = [], [], []
    for _ in range(size):
        scene = world.sample_scene(rng)
        if rng.random() < caption_fraction:
            question, answer = world.CAPTION_PROMPT, world.caption_for(scene)
        else:
            example = knowledge.vqa_for(scene, rng)
            question, answer = example.question, example.answer
        rows.append(encode(processor.tokenizer, chat_prompt(processor, question), answer))
        images.append(world.render_scene(scene))
        if with_patch_labels:
            labels.append(patch_labels(scene))
    batch = pad(rows, processor.tokenizer.pad_token_id)
    batch["pixel_values"] = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    if with_patch_labels:
        batch["patch_shapes"] = torch.stack([shapes for shapes, _ in labels])
        batch["patch_colours"] = torch.stack([colours for _, colours in labels])
    return batch


def text_example(
    rng: random.Random, facts: list[knowledge.Fact], mix: tuple[float, ...] = TrainConfig.text_mix
) -> tuple[str, str]:
    """One training text task, drawn with probabilities ``mix``: a cloze fact, an MCQA variant in a trained
    wording, an option-matching question ("Which option is yellow?" -> its letter, which teaches the letter
    look-up MCQA needs), a sum, or (a fifth share, if given) the fact's question answered in words
    (``Question: What colour is the banana?\nAnswer:`` -> ``yellow``, the recall MCQA needs)."""
    draw = rng.random() * sum(mix)
    bounds = [sum(mix[: k + 1]) for k in range(len(mix))]
    if draw < bounds[0]:
        fact = rng.choice(facts)
        return fact.prompt, fact.answer
    if draw < bounds[1]:
        fact = rng.choice(facts)
        prompt, letter, _ = knowledge.mcqa_variant(fact, rng, rng.choice(knowledge.TRAIN_TEMPLATES), facts)
        return prompt, letter
    if draw < bounds[2]:
        fact = rng.choice(facts)
        _, letter, options = knowledge.mcqa_variant(fact, rng, 0, facts)
        template = rng.choice(knowledge.TRAIN_TEMPLATES)
        return knowledge.mcqa_prompt(f"Which option is {fact.answer}?", options, template), letter
    if len(mix) < 5 or draw < bounds[3]:
        a, b = rng.randrange(10), rng.randrange(10)
        return f"{a}+{b}=", str(a + b)
    fact = rng.choice(facts)
    return knowledge.question_prompt(fact.question), fact.answer


def text_batch(
    tokenizer: Any, rng: random.Random, size: int, facts: list[knowledge.Fact],
    mix: tuple[float, ...] = TrainConfig.text_mix,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """``size`` text-only examples: input_ids, labels, attention_mask."""
    rows = [encode(tokenizer, *text_example(rng, facts, mix)) for _ in range(size)]
    return pad(rows, tokenizer.pad_token_id)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without its targets (:data:`TARGET_KEYS`)."""
    return {k: v for k, v in batch.items() if k not in TARGET_KEYS}


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits [b, t, vocab]`` at ``t`` against ``labels [b, t]`` at ``t + 1`` (-100 ignored)."""
    shifted = logits[:, :-1]
    return torch.nn.functional.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), labels[:, 1:].reshape(-1))


def answer_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens (labels != -100)."""
    return next_token_loss(model(**model_inputs(batch)).logits, batch["labels"])


@dataclass(frozen=True)
class PatchWords:
    """Token ids of the world's colour words (``colours [6]``, order of ``world.COLOURS``) and shape words
    (``shapes [4]``), and of the image token."""

    colours: torch.Tensor
    shapes: torch.Tensor
    image_token_id: int

    @classmethod
    def of(cls, tokenizer: Any) -> PatchWords:
        ids = tokenizer.convert_tokens_to_ids
        return cls(torch.tensor([ids(c) for c in world.COLOURS]), torch.tensor([ids(s) for s in world.SHAPES]),
                   int(ids(IMAGE_TOKEN)))


def patch_word_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor], words: PatchWords) -> torch.Tensor:
    """At each image token whose patch an object covers (``patch_shapes > 0``), minus the mean log-probability of
    that object's colour word and shape word under the model's output there, averaged over those tokens.

    Args:
        logits: ``[b, t, vocab]`` of the image batch; its image tokens are the ``GRID_SIZE**2`` positions per row
            where ``input_ids`` is the image token, in grid (row-major) order.
        batch: from :func:`image_batch` with ``with_patch_labels=True``.

    Returns:
        A scalar: ``mean over object patches of -(log p(colour word) + log p(shape word)) / 2``.
    """
    shapes, colours = batch["patch_shapes"], batch["patch_colours"]
    at_image = logits[batch["input_ids"] == words.image_token_id].reshape(*shapes.shape, logits.shape[-1])
    log_probs = torch.log_softmax(at_image.float(), dim=-1)
    on_object = shapes > 0
    colour_ids = words.colours.to(shapes.device)[(colours - 1).clamp(min=0)]
    shape_ids = words.shapes.to(shapes.device)[(shapes - 1).clamp(min=0)]
    colour_lp = log_probs.gather(-1, colour_ids[..., None])[..., 0]
    shape_lp = log_probs.gather(-1, shape_ids[..., None])[..., 0]
    terms = -(colour_lp + shape_lp) / 2
    return terms[on_object].mean() if on_object.any() else terms.sum() * 0.0
