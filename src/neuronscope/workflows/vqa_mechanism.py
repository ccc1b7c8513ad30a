"""``recipe vqa``: the VQA mechanism of Yu & Ananiadou (2024, "Understanding Multimodal LLMs: the Mechanistic
Interpretability of Llava in Visual Question Answering"), VQA side by side with the same question asked as text.

Per question (an image, a question such as "What colour is the circle?", its answer, and a ``context`` that states
the answer in words, "The circle is red."):

1. **VQA**: every head's log-probability increase (LPI) for the answer at the last position, with the image
   (:func:`~neuronscope.attribute.log_probability_increase.head_log_probability_increase`); the important image
   patches of the top head(s) (:func:`neuronscope.workflows.patches.important_patches`: each image token's
   contribution through the head, scored by LPI);
2. **TQA**: the same heads' LPI when the question is asked without the image, after the context
   (``"{context} {question}"`` through the same chat template), and which prompt token the top TQA head reads the
   answer from (per-source LPI) — the paper finds VQA reads the colour from the object's patches as textual
   in-context QA reads it from the stated word;
3. optionally (``--ablation``) each head zeroed at the last position (the input of its output projection), the
   drop of the answer's log-probability: a brute-force check of the LPI ranking.

Across questions: the mean LPI map of each condition ``[layers, heads]``, each layer's share of the positive LPI,
the overlap of the top heads, the Spearman correlation of the two maps, accuracies, and (bundled scenes) how
often the top patch lies on the asked object.

Files: ``tables/heads.csv``, ``tables/layers.csv``, ``tables/questions.csv``, ``plots/heads_vqa_tqa.png``,
``plots/layers_vqa_tqa.png``, ``heatmaps/q<n>.patches.png`` (+ attention map, masks) for the first ``--drawn``
questions, ``metrics.json``, report.

Example:
    >>> run("recipe vqa", bundled_scenes=40, out="runs/vqa")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from neuronscope.errors import InputError, NothingProcessedError
from neuronscope.runs.folder import RunDir

#: a patch "touches" an object that covers any of it (the smallest positive coverage counts)
TOUCHES = 1e-9


# ---------------------------------------------------------------------------------------------------- pure math
def head_order(scores: torch.Tensor) -> torch.Tensor:
    """``[layers * heads, 2]`` (layer, head) rows from the best score down (ties: lower layer, then head).

    Example:
        >>> head_order(torch.tensor([[0.1, 0.5], [0.5, -1.0]])).tolist()
        [[0, 1], [1, 0], [0, 0], [1, 1]]
    """
    flat = torch.sort(scores.flatten().double(), descending=True, stable=True).indices
    return torch.stack([flat // scores.shape[1], flat % scores.shape[1]], dim=1)


def layer_shares(scores: torch.Tensor) -> torch.Tensor:
    """Each layer's share of the positive head scores of a ``[layers, heads]`` map (zeros when none is positive).

    Example:
        >>> layer_shares(torch.tensor([[1.0, -2.0], [3.0, 0.0]])).tolist()
        [0.25, 0.75]
    """
    positive = scores.clamp(min=0).sum(1).double()
    total = positive.sum()
    return positive / total if float(total) > 0 else torch.zeros_like(positive)


def compare_head_maps(a: torch.Tensor, b: torch.Tensor, k: int) -> dict[str, Any]:
    """How two ``[layers, heads]`` maps agree: the Spearman correlation over all heads and the overlap of the
    top-``k`` heads (``|A ∩ B| / k``), with both top lists.

    Example:
        >>> compare_head_maps(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 3.0]]), 1)["top_overlap"]
        1.0
    """
    from neuronscope.workflows.patches import rank_correlation

    k = min(int(k), a.numel())
    top_a, top_b = head_order(a)[:k].tolist(), head_order(b)[:k].tolist()
    shared = {tuple(head) for head in top_a} & {tuple(head) for head in top_b}
    return {"spearman": rank_correlation(a.flatten(), b.flatten()), "top_overlap": len(shared) / k if k else 0.0,
            "top_a": top_a, "top_b": top_b, "k": k}


# ---------------------------------------------------------------------------------------------------- plumbing
def text_question_batch(processor: Any, text: str, answer_prefix: str | None = None) -> Any:
    """A question asked without the image: one user turn of text through the processor's chat template, tokenised
    as the processor tokenises a VQA prompt (special tokens added)."""
    from neuronscope.inputs.batch import encode_prompts

    messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    if answer_prefix:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer_prefix}]})
        rendered = processor.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    else:
        rendered = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return encode_prompts(getattr(processor, "tokenizer", processor), rendered)


@torch.no_grad()
def head_ablation_effects(model: Any, batch: Any, token: int) -> torch.Tensor:
    """``[layers, heads]``: ``log p(token)`` minus its value with that head zeroed at the last position (the input
    of the attention output projection), one forward per head."""
    from neuronscope.models.adapter import get_adapter
    from neuronscope.trace import ablate_heads, intervene

    adapter = get_adapter(model)

    def log_prob() -> float:
        return float(model(**batch.inputs).logits[0, -1].double().log_softmax(-1)[token])

    base = log_prob()
    effects = torch.zeros(adapter.n_layers, adapter.n_heads, dtype=torch.float64)
    for layer in range(adapter.n_layers):
        for head in range(adapter.n_heads):
            with intervene(model, ablate_heads(model, [(layer, head)], positions="last")):
                effects[layer, head] = base - log_prob()
    return effects


@dataclass
class Question:
    """One question: its record (image, question, answer, context) and, for bundled scenes, the asked object's
    coverage of each grid cell ``[cells]``."""

    record: Any
    coverage: torch.Tensor | None = None


def bundled_colour_questions(n: int, seed: int = 0) -> list[Question]:
    """``n`` colour questions about held-out scenes: "What colour is the {shape}?" -> colour, context
    "The {shape} is {colour}.", one object per scene (drawn with a seeded stream)."""
    import random

    from neuronscope.bundled import render_scene, sample_scenes
    from neuronscope.bundled.world import patch_coverage
    from neuronscope.inputs.images import ImageRecord

    rng = random.Random(f"neuronscope-vqa-mechanism:{seed}")
    out = []
    for number, scene in enumerate(sample_scenes(n, seed=seed, split="test")):
        which = rng.randrange(len(scene.objects))
        obj = scene.objects[which]
        record = ImageRecord(f"scene-{number}", question=f"What colour is the {obj.shape}?", answer=obj.colour,
                             image=render_scene(scene), context=f"The {obj.shape} is {obj.colour}.")
        out.append(Question(record, torch.from_numpy(patch_coverage(scene)[which]).flatten()))
    return out


def _ask(model: Any, processor: Any, question: Question, options: Any, run: RunDir, number: int) -> Any:
    """Everything about one question: an :class:`~neuronscope.runs.loop.Example` (or a Skip)."""
    from neuronscope.attribute.log_probability_increase import (
        head_log_probability_increase,
        head_source_log_probability_increase,
    )
    from neuronscope.inputs.batch import encode_images, to_model
    from neuronscope.inputs.targets import token_targets, word_token
    from neuronscope.measure.patch_localisation import top_patches_on_object
    from neuronscope.runs.loop import Example, Skip
    from neuronscope.workflows.patches import important_patches

    record = question.record
    tokenizer = getattr(processor, "tokenizer", processor)
    try:
        image = record.load()
        if not record.question or not record.answer:
            raise InputError(f"{record.where}: the record needs a question and an answer")
        answer = word_token(tokenizer, record.answer, options.leading_space)
    except InputError as error:
        return Skip(str(error), {"id": record.id, "where": record.where})
    # float64 models are scored in float64: LPIs of small heads are differences of log-probabilities near log(V)
    precision = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
    vqa = to_model(encode_images(processor, [image], record.question, assistant_prefix=options.answer_prefix), model)
    vqa_lpi = head_log_probability_increase(model, vqa, token_targets(vqa, answer, processor),
                                            compute_dtype=precision).values[0, 0]
    found = important_patches(model, processor, image, record.question, answer_prefix=options.answer_prefix,
                              answer_token=answer, heads=head_order(vqa_lpi)[:options.patch_heads],
                              out=run if number < options.drawn else None, name=f"q{number}")
    with torch.no_grad():
        vqa_pred = int(model(**vqa.inputs).logits[0, -1].argmax())
    tensors: dict[str, torch.Tensor] = {"vqa_lpi": vqa_lpi, "patch_scores": found.scores}
    row: dict[str, Any] = {"index": number, "id": record.id, "question": record.question, "answer": record.answer,
                           "vqa_prediction": tokenizer.decode([vqa_pred]), "vqa_correct": vqa_pred == answer,
                           "patch_heads": found.heads.tolist(), "top_patch_position": found.as_dict()[
                               "top_patch_position"]}
    if question.coverage is not None and found.drawn:
        cells = found.layout.token_index(found.layout.tiles[0].positions)
        scores, coverage = found.scores[cells], question.coverage
        row.update({"top_patch_on_object": top_patches_on_object(scores, coverage, n=1),
                    "top_patch_touches_object": top_patches_on_object(scores, coverage, n=1, on=TOUCHES),
                    "on_object_chance": float((coverage >= 0.5).double().mean()),
                    "touches_object_chance": float((coverage >= TOUCHES).double().mean())})
    if options.ablation:
        tensors["vqa_ablation"] = head_ablation_effects(model, vqa, answer)
    if record.context:
        tqa = to_model(text_question_batch(processor, f"{record.context} {record.question}", options.answer_prefix),
                       model)
        targets = token_targets(tqa, answer, processor)
        tensors["tqa_lpi"] = head_log_probability_increase(model, tqa, targets, compute_dtype=precision).values[0, 0]
        with torch.no_grad():
            tqa_pred = int(model(**tqa.inputs).logits[0, -1].argmax())
        top = head_order(tensors["tqa_lpi"])[:1]
        sources = head_source_log_probability_increase(model, tqa, targets, heads=top).values[0, 0, 0]  # [T]
        source = int(torch.sort(sources, descending=True, stable=True).indices[0])
        row.update({"tqa_prediction": tokenizer.decode([tqa_pred]), "tqa_correct": tqa_pred == answer,
                    "tqa_top_source": tokenizer.decode([int(tqa.input_ids[0, source])]),
                    "tqa_top_source_is_answer": int(tqa.input_ids[0, source]) == answer})
        if options.ablation:
            tensors["tqa_ablation"] = head_ablation_effects(model, tqa, answer)
    return Example(tensors, row)


def vqa_mechanism(options: Any, *, loaded: Any = None) -> Any:
    """``recipe vqa``: see the module docstring."""
    from neuronscope.inputs.images import read_vqa_jsonl
    from neuronscope.runs.loop import run_loop
    from neuronscope.workflows.common import load
    from neuronscope.workflows.vqa_summary import summarise_questions

    if options.bundled_scenes:
        questions = bundled_colour_questions(options.bundled_scenes, options.seed)
        declared_skips: list[dict[str, Any]] = []
    else:
        dataset = read_vqa_jsonl(options.questions, options.image_root)
        questions = [Question(record) for record in dataset.records]
        declared_skips = [skip.to_dict() for skip in dataset.skipped]
    questions = questions[:options.max_questions] if options.max_questions else questions
    RunDir.check(options.out, resume=options.resume, overwrite=options.overwrite)
    if options.bundled_scenes and not options.model:
        from neuronscope.bundled import SHAPES_VLM_PATH

        options = replace(options, model=str(SHAPES_VLM_PATH))
    loaded = load(options, loaded)
    run = RunDir(options.out, resume=options.resume, overwrite=options.overwrite)
    run.write_config({"command": "recipe vqa", **options.recorded(),
                      "questions": [[q.record.id, q.record.question, q.record.answer, q.record.context]
                                    for q in questions]})
    run.write_meta({"runtime": options.runtime()})
    run_loop(run, questions, lambda chunk: [_ask(loaded.model, loaded.processor, question, options, run, number)
                                            for number, question in chunk], batch_size=1, label="questions")
    done, skipped = [], list(declared_skips)
    for entry in sorted(run.ledger_entries(), key=lambda e: int(e["index"])):
        tensors, record = run.read_example(entry["key"])
        if record.get("skipped"):
            skipped.append({"source": "questions", "record": record.get("id"), "reason": record["skipped"]})
        else:
            done.append((tensors, record))
    run.write_skipped(skipped)
    if not done:
        raise NothingProcessedError(f"no question could be asked ({len(skipped)} skipped); the reasons are in "
                                    f"{run.path / 'skipped.json'}")
    return summarise_questions(run, done, skipped, options)


__all__ = ["Question", "bundled_colour_questions", "compare_head_maps", "head_ablation_effects", "head_order",
           "layer_shares", "text_question_batch", "vqa_mechanism"]
