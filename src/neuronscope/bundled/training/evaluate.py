"""Held-out scores of a bundled-world model: captions, visual questions, MCQA on held-out wordings, cloze facts,
the facts as questions, option matching and sums (the table of MODEL_CARD.md).

Example:
    >>> from neuronscope.bundled import load_shapes_vlm
    >>> model, processor = load_shapes_vlm()  # doctest: +SKIP
    >>> evaluate(model, processor)["caption_exact"]  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from neuronscope.bundled import knowledge, world
from neuronscope.bundled.training.batches import chat_messages

VQA_KINDS: dict[str, str] = {"colour": "What colour", "shape": "What shape", "count": "How many",
                             "size": "Is the", "exists": "Is there", "where": "Where"}  # fmt: skip


@torch.no_grad()
def generate_answers(
    model: Any, processor: Any, questions: list[str], images: list[Image.Image] | None = None,
    answer_prefix: str | None = None, max_new_tokens: int = 12,
) -> list[str]:  # fmt: skip
    """Greedy answers (decoded new tokens, stripped) to chat ``questions``, with one image each if given."""
    conversations = [chat_messages(q, images is not None, answer_prefix) for q in questions]
    kwargs: dict[str, Any] = (
        {"continue_final_message": True} if answer_prefix else {"add_generation_prompt": True}
    )
    texts = processor.apply_chat_template(conversations, tokenize=False, **kwargs)
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [processor.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]


def caption_scenes(model: Any, processor: Any, scenes: list[world.Scene]) -> list[str]:
    """Greedy captions, Pan et al. style: the assistant turn is opened with ``"An image of"``; returns full captions."""
    images = [world.render_scene(s) for s in scenes]
    prompts = [world.CAPTION_PROMPT] * len(scenes)
    continuations = generate_answers(model, processor, prompts, images, answer_prefix=world.CAPTION_PREFIX)
    return [f"{world.CAPTION_PREFIX} {c}".strip() for c in continuations]


def caption_word_accuracy(predicted: list[str], scenes: list[world.Scene]) -> dict[str, float]:
    """Exact match, and per-slot accuracy of the colour and shape words (slot k = k-th object left to right)."""
    exact = colour_hits = shape_hits = slots = 0
    for caption, scene in zip(predicted, scenes, strict=False):
        exact += caption == world.caption_for(scene)
        words = caption.split()
        for k, obj in enumerate(scene.objects):
            # reference layout: "An image of a C S and a C S" -> colour at 4 + 4k, shape at 5 + 4k
            colour = words[4 + 4 * k] if len(words) > 4 + 4 * k else ""
            shape = words[5 + 4 * k] if len(words) > 5 + 4 * k else ""
            colour_hits += colour == obj.colour
            shape_hits += shape == obj.shape
            slots += 1
    n = max(1, len(scenes))
    return {"caption_exact": exact / n, "colour_word": colour_hits / max(1, slots),
            "shape_word": shape_hits / max(1, slots)}  # fmt: skip


@torch.no_grad()
def next_token_answers(model: Any, tokenizer: Any, prompts: list[str]) -> list[str]:
    """The greedy next token after each raw text prompt (left-padded batch), as a string."""
    inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    logits = model(**inputs).logits[:, -1]
    return tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())


def _accuracy(predicted: list[str], truth: list[str]) -> float:
    return sum(p == t for p, t in zip(predicted, truth, strict=True)) / max(1, len(truth))


def image_metrics(model: Any, processor: Any, n_images: int = 200, seed: int = 0, batch: int = 50) -> dict[str, float]:
    """Caption accuracies on ``n_images`` held-out scenes and VQA on as many held-out questions (all and per kind)."""
    scenes = world.sample_scenes(n_images, seed=seed, split="test")
    captions: list[str] = []
    for i in range(0, n_images, batch):
        captions += caption_scenes(model, processor, scenes[i : i + batch])
    metrics = caption_word_accuracy(captions, scenes)
    vqa = knowledge.vqa_dataset(n_images, seed=seed, split="test")
    answers: list[str] = []
    for i in range(0, n_images, batch):
        chunk = vqa[i : i + batch]
        answers += generate_answers(model, processor, [e.question for e in chunk],
                                    [world.render_scene(e.scene) for e in chunk], max_new_tokens=3)  # fmt: skip
    metrics["vqa"] = _accuracy(answers, [e.answer for e in vqa])
    for kind, opening in VQA_KINDS.items():
        pairs = [(a, e.answer) for a, e in zip(answers, vqa, strict=True) if e.question.startswith(opening)]
        metrics[f"vqa_{kind}"] = _accuracy([a for a, _ in pairs], [t for _, t in pairs])
    return metrics


def text_metrics(model: Any, tokenizer: Any, seed: int = 0) -> dict[str, float]:
    """MCQA on held-out wordings (all and per domain) and on trained wordings with fresh option orders, option
    matching on held-out wordings, cloze facts, the facts as questions, and sums."""
    metrics: dict[str, float] = {}
    records = knowledge.mcqa_dataset("test", n_variants=3, seed=seed)
    predicted = next_token_answers(model, tokenizer, [s for r in records for s in r.sentences])
    letters = [label for r in records for label in r.obj_label]
    metrics["mcqa"] = _accuracy(predicted, letters)
    domains = [r.domain for r in records for _ in r.sentences]
    for domain in knowledge.DOMAINS:
        pairs = [(p, t) for d, p, t in zip(domains, predicted, letters, strict=True) if d == domain]
        metrics[f"mcqa_{domain}"] = _accuracy([p for p, _ in pairs], [t for _, t in pairs])
    seen = knowledge.mcqa_dataset("train", n_variants=3, seed=seed)  # trained wordings, fresh option orders
    predicted = next_token_answers(model, tokenizer, [s for r in seen for s in r.sentences])
    metrics["mcqa_seen_wordings"] = _accuracy(predicted, [label for r in seen for label in r.obj_label])
    facts = knowledge.facts_dataset()
    answers = [f.answer for f in facts]
    metrics["facts_cloze"] = _accuracy(next_token_answers(model, tokenizer, [f.prompt for f in facts]), answers)
    questions = [knowledge.question_prompt(f.question) for f in facts]
    metrics["facts_question"] = _accuracy(next_token_answers(model, tokenizer, questions), answers)
    matching = [(knowledge.mcqa_prompt(f"Which option is {r.answer}?", options, knowledge.TEST_TEMPLATES[k % 2]),
                 letter)
                for r in records for k, (options, letter) in enumerate(zip(r.options, r.obj_label, strict=True))]
    predicted = next_token_answers(model, tokenizer, [prompt for prompt, _ in matching])
    metrics["option_matching"] = _accuracy(predicted, [letter for _, letter in matching])
    sums = knowledge.sums_dataset()
    metrics["sums"] = _accuracy(next_token_answers(model, tokenizer, [s.prompt for s in sums]),
                                [s.answer for s in sums])
    return metrics


def evaluate(
    model: Any, processor: Any, n_images: int = 200, seed: int = 0, batch: int = 50
) -> dict[str, float]:
    """Held-out accuracies: captions, VQA (test split), MCQA (held-out wordings), cloze facts and sums."""
    metrics = image_metrics(model, processor, n_images, seed, batch)
    metrics.update(text_metrics(model, processor.tokenizer, seed))
    return {k: round(v, 4) for k, v in metrics.items()}
