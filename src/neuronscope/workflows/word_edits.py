"""Word edits: remove a word from a model's answers, replace one word by another, suppress a concept.

Each use case locates the neurons (unless given), makes a :class:`~neuronscope.edit.weights.ValueVectorEdit` and
measures it: greedy generations on the edit prompts and on unrelated prompts, before and with the edit applied. The
model is left as it was (the edit is returned, not applied).

A word's neurons are located by :func:`~neuronscope.workflows.word_location.locate_word`.

Edits:
- ``"optimised"``: :func:`~neuronscope.edit.optimise.optimise_edit` on those value vectors (demote the word, or
  promote the replacement, at the occurrence positions; KL on the unrelated prompts keeps them).
- ``"erase"``: ``w_i ← 0``.
- ``"token_shift"``: closed form ``w_i ← w_i + λ (u_t − u_s)`` (``remove_word``: ``w_i ← w_i − λ u_s``).
- ``"knowledge_neuron"`` (``replace_word``): ``w_i ← w_i − λ1 e(s) + λ2 e(t)`` (Dai et al.).

Example:
    >>> edit, report = remove_word(model, tokenizer, ["The capital of France is"], "Paris",
    ...                            unrelated=["The capital of Japan is"])
    >>> report.as_dict()["rates"]["Paris"]            # {"before": 1.0, "after": 0.0}
    >>> edit.save("edits/no-paris")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from neuronscope.edit.optimise import optimise_edit
from neuronscope.edit.weights import ValueVectorEdit, _check_neurons
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs.batch import Batch, Generation, generate, prompt_batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.measure.edit_metrics import token_agreement
from neuronscope.measure.metrics import concept_rate
from neuronscope.models.adapter import get_adapter
from neuronscope.results.base import JsonResult
from neuronscope.workflows.word_location import _stop_ids, locate_word, word_variants

REMOVE_METHODS = ("optimised", "erase", "token_shift")
REPLACE_METHODS = ("optimised", "token_shift", "knowledge_neuron")


# -- reports ---------------------------------------------------------------------------------------------------------
@dataclass
class UseCaseReport(JsonResult):
    """What an edit use case did and what it changed.

    Attributes:
        use_case: ``"remove_word"``, ``"replace_word"`` or ``"suppress_concept"``.
        method: how the edit was made.
        words: the words involved, by role (``{"word": ...}`` or ``{"source": ..., "target": ...}``).
        neurons: ``[[layer, index], ...]`` of the edited value vectors.
        occurrences: how many times the located word was said in the greedy answers (0 when neurons were given).
        rates: per word, its rate (fraction of answers that say it) on the edit prompts ``{"before", "after"}``.
        unrelated_rates: the same on the unrelated prompts.
        unrelated_agreement: token agreement of the unrelated prompts' greedy answers before / after (1 = same).
        answers, unrelated_answers: the greedy answers ``{"before": [...], "after": [...]}``.
        edit_params: the edit's settings (``ValueVectorEdit.params``).
    """

    use_case: str
    method: str
    words: dict[str, str]
    neurons: list[list[int]]
    occurrences: int = 0
    rates: dict[str, dict[str, float]] = field(default_factory=dict)
    unrelated_rates: dict[str, dict[str, float]] = field(default_factory=dict)
    unrelated_agreement: float | None = None
    answers: dict[str, list[str]] = field(default_factory=dict)
    unrelated_answers: dict[str, list[str]] = field(default_factory=dict)
    edit_params: dict[str, Any] = field(default_factory=dict)

    format: ClassVar[str] = "neuronscope.word_edit"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {
            "use_case": self.use_case, "method": self.method, "words": dict(self.words),
            "neurons": [list(row) for row in self.neurons], "n_neurons": len(self.neurons),
            "occurrences": self.occurrences, "rates": self.rates, "unrelated_rates": self.unrelated_rates,
            "unrelated_agreement": self.unrelated_agreement, "answers": self.answers,
            "unrelated_answers": self.unrelated_answers, "edit_params": _jsonable(self.edit_params),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def _answers(model: nn.Module, processor: Any, batch: Batch | None, edit: ValueVectorEdit | None,
             max_new_tokens: int) -> Generation | None:
    if batch is None:
        return None
    if edit is None:
        return generate(model, processor, batch, max_new_tokens=max_new_tokens)
    with edit.applied(model):
        return generate(model, processor, batch, max_new_tokens=max_new_tokens)


def _tokens_until_stop(generation: Generation, stop: set[int]) -> list[list[int]]:
    out = []
    for row in generation.tokens.tolist():
        end = next((i for i, token in enumerate(row) if token in stop), len(row))
        out.append(row[:end] or row[:1])
    return out


def measure_answers(
    model: nn.Module,
    processor: Any,
    edit: ValueVectorEdit,
    report: UseCaseReport,
    batch: Batch | None,
    unrelated: Batch | None,
    words: Sequence[str],
    *,
    max_new_tokens: int = 16,
    before: Generation | None = None,
    plurals: bool = False,
) -> UseCaseReport:
    """Fill ``report`` with the words' rates and the answers before / with ``edit`` (the model is left unedited)."""
    generations = {
        "before": before if before is not None else _answers(model, processor, batch, None, max_new_tokens),
        "after": _answers(model, processor, batch, edit, max_new_tokens),
    }
    unrelated_generations = {
        "before": _answers(model, processor, unrelated, None, max_new_tokens),
        "after": _answers(model, processor, unrelated, edit, max_new_tokens),
    }
    for word in words:
        if batch is not None:
            report.rates[word] = {when: concept_rate(gen.texts, word, plurals=plurals)
                                  for when, gen in generations.items()}
        if unrelated is not None:
            report.unrelated_rates[word] = {when: concept_rate(gen.texts, word, plurals=plurals)
                                            for when, gen in unrelated_generations.items()}
    if batch is not None:
        report.answers = {when: list(gen.texts) for when, gen in generations.items()}
    if unrelated is not None:
        report.unrelated_answers = {when: list(gen.texts) for when, gen in unrelated_generations.items()}
        stop = _stop_ids(processor)
        report.unrelated_agreement = token_agreement(_tokens_until_stop(unrelated_generations["before"], stop),
                                                     _tokens_until_stop(unrelated_generations["after"], stop))
    return report


def _given_neurons(model: nn.Module, neurons: torch.Tensor) -> torch.Tensor:
    """``[n, 2]`` (layer, index) rows, or the ``[n, 3]`` (layer, expert, index) rows of an MoE model, checked."""
    neurons = torch.as_tensor(neurons, dtype=torch.long)
    experts = neurons.dim() == 2 and neurons.shape[1] == 3
    return _check_neurons(get_adapter(model), neurons if experts else neurons.reshape(-1, 2))


# -- use cases ---------------------------------------------------------------------------------------------------
def remove_word(
    model: nn.Module,
    processor: Any,
    prompts: Sequence[str] | str | Batch,
    word: str,
    *,
    neurons: torch.Tensor | None = None,
    method: str = "optimised",
    top_k: int = 20,
    unrelated: Sequence[str] | Batch | None = None,
    strength: float = 1.0,
    max_new_tokens: int = 16,
    chat: bool = False,
    locate_method: str = "contribution",
    specific: bool = True,
    plurals: bool = False,
    optimise_options: dict[str, Any] | None = None,
    reason: str = "",
) -> tuple[ValueVectorEdit, UseCaseReport]:
    """Remove ``word`` from the model's answers to ``prompts`` by editing the value vectors of its neurons.

    Args:
        model, processor: the model and its tokenizer / processor.
        prompts: prompts (encoded with ``chat``) or a ready :class:`Batch` (e.g. images with a caption prompt).
        word: the word to remove (e.g. ``"Paris"``); matched in answers as a whole word, case-insensitively.
        neurons: ``[n, 2]`` neurons to edit; default: the top-``top_k`` located by :func:`locate_word`.
        method: ``"optimised"`` (default: demote the word at the positions that said it, KL on ``unrelated``),
            ``"erase"`` (``w_i ← 0``) or ``"token_shift"`` (``w_i ← w_i − λ u_word``, ``λ = strength``).
        top_k: neurons to locate.
        unrelated: prompts whose answers should stay (measured; and the KL term of the optimised edit).
        strength: λ of ``token_shift``.
        max_new_tokens: length of the greedy answers.
        locate_method: the attribution method used to locate (default ``"contribution"``).
        specific: rank neurons against the unrelated prompts' own answers (``contrast`` of :func:`locate_word`),
            so that neurons shared by every similar answer are left alone. Default True (when ``unrelated`` given).
        plurals: also count "-s"/"-es" forms of the word in the rates.
        optimise_options: passed to :func:`optimise_edit` (``lr``, ``steps``, ``kl_weight``, ``demote_below`` …).

    Returns:
        ``(edit, report)``: the :class:`ValueVectorEdit` (not applied) and a :class:`UseCaseReport` with the word's
        rate in the answers before / after, on the edit and the unrelated prompts.

    Example:
        >>> edit, report = remove_word(model, tok, ["The capital of France is"], "Paris",
        ...                            unrelated=["The capital of Japan is"])
        >>> report.rates["Paris"], report.unrelated_agreement
    """
    if method not in REMOVE_METHODS:
        raise NeuronscopeError(f"unknown method {method!r} to remove a word: use one of {', '.join(REMOVE_METHODS)}")
    batch = prompt_batch(processor, prompts, model, chat)
    unrelated_batch = None if unrelated is None else prompt_batch(processor, unrelated, model, chat)
    generation = generate(model, processor, batch, max_new_tokens=max_new_tokens)
    location = None
    if neurons is None or method == "optimised":
        location = locate_word(model, processor, batch, word, top_k=top_k, locate_method=locate_method,
                               generation=generation, contrast=unrelated_batch if specific else None)
    chosen = location.neurons if neurons is None else _given_neurons(model, neurons)
    reason = reason or f"remove {word!r} from answers"
    if method == "erase":
        edit = ValueVectorEdit.erase(model, chosen, reason=reason)
    elif method == "token_shift":
        source = word_variants(processor, word)[0][0]
        unembed = get_adapter(model).unembedding().detach().float().cpu()
        deltas = (-float(strength) * unembed[source]).expand(len(chosen), -1).clone()
        if not bool(torch.isfinite(deltas).all()):
            raise NeuronscopeError(f"strength must be a finite number, got {strength}")
        edit = ValueVectorEdit.from_deltas(model, chosen, deltas, "token_shift",
                                           {"source": source, "target": -1, "lambda": float(strength)}, reason)
    else:
        # small steps: Adam moves every coordinate by about lr at first, and value vectors have norms of a few units
        options = {"demote_below": 0.05, "lr": 0.002, "steps": 100, **(optimise_options or {})}
        edit = optimise_edit(model, chosen, location.batch, location.targets, goal="demote",
                             unrelated=unrelated_batch, reason=reason, **options)
    report = UseCaseReport("remove_word", method, {"word": word}, chosen.tolist(),
                           location.occurrences if location else 0, edit_params=dict(edit.params))
    measure_answers(model, processor, edit, report, batch, unrelated_batch, [word], max_new_tokens=max_new_tokens,
            before=generation, plurals=plurals)
    return edit, report


def replace_word(
    model: nn.Module,
    processor: Any,
    prompts: Sequence[str] | str | Batch,
    source_word: str,
    target_word: str,
    *,
    neurons: torch.Tensor | None = None,
    method: str = "optimised",
    top_k: int = 20,
    unrelated: Sequence[str] | Batch | None = None,
    strength: float = 1.0,
    lambda_source: float = 1.0,
    lambda_target: float = 1.0,
    max_new_tokens: int = 16,
    chat: bool = False,
    locate_method: str = "contribution",
    specific: bool = True,
    plurals: bool = False,
    optimise_options: dict[str, Any] | None = None,
    reason: str = "",
) -> tuple[ValueVectorEdit, UseCaseReport]:
    """Make the model say ``target_word`` where it says ``source_word`` (correct a hallucinated object, change a
    fact's answer).

    Args:
        prompts: prompts whose answers say ``source_word`` (or a :class:`Batch`).
        source_word, target_word: the word said now and the word to say instead.
        neurons: ``[n, 2]`` neurons to edit; default the top-``top_k`` behind ``source_word`` (:func:`locate_word`).
        method: ``"optimised"`` (default: promote the target's first token at the positions that said the source,
            KL on ``unrelated``), ``"token_shift"`` (``w_i ← w_i + λ (u_t − u_s)``, ``λ = strength``) or
            ``"knowledge_neuron"`` (``w_i ← w_i − λ1 e(s) + λ2 e(t)``).
        Other arguments: as :func:`remove_word`.

    Returns:
        ``(edit, report)``; ``report.rates`` holds both words' rates before / after.

    Example:
        >>> edit, report = replace_word(model, tok, ["The capital of France is"], "Paris", "Rome")
        >>> report.rates["Rome"]["after"]
    """
    if method not in REPLACE_METHODS:
        raise NeuronscopeError(f"unknown method {method!r} to replace a word: use one of {', '.join(REPLACE_METHODS)}")
    batch = prompt_batch(processor, prompts, model, chat)
    unrelated_batch = None if unrelated is None else prompt_batch(processor, unrelated, model, chat)
    generation = generate(model, processor, batch, max_new_tokens=max_new_tokens)
    source_id = word_variants(processor, source_word)[0][0]
    target_id = word_variants(processor, target_word)[0][0]
    location = None
    if neurons is None or method == "optimised":
        location = locate_word(model, processor, batch, source_word, top_k=top_k, locate_method=locate_method,
                               generation=generation, contrast=unrelated_batch if specific else None)
    chosen = location.neurons if neurons is None else _given_neurons(model, neurons)
    reason = reason or f"replace {source_word!r} by {target_word!r}"
    if method == "token_shift":
        edit = ValueVectorEdit.token_shift(model, chosen, source_id, target_id, strength, reason=reason)
    elif method == "knowledge_neuron":
        edit = ValueVectorEdit.knowledge_neuron(model, chosen, source_id, target_id, lambda_source, lambda_target,
                                                reason=reason)
    else:
        # promote the target token where the source's first token was said, with the prefix the model generated
        targets = location.targets
        promote = TargetSet(torch.where(targets.valid, torch.full_like(targets.token_ids, target_id),
                                        targets.token_ids), targets.positions, targets.valid,
                            [[target_word] * len(row) for row in targets.labels])
        options = {"lr": 0.002, "steps": 100, **(optimise_options or {})}
        edit = optimise_edit(model, chosen, location.batch, promote, goal="promote", unrelated=unrelated_batch,
                             reason=reason, **options)
    report = UseCaseReport("replace_word", method, {"source": source_word, "target": target_word}, chosen.tolist(),
                           location.occurrences if location else 0, edit_params=dict(edit.params))
    measure_answers(model, processor, edit, report, batch, unrelated_batch, [source_word, target_word],
            max_new_tokens=max_new_tokens, before=generation, plurals=plurals)
    return edit, report


def suppress_concept(
    model: nn.Module,
    neurons: torch.Tensor,
    *,
    processor: Any = None,
    prompts: Sequence[str] | str | Batch | None = None,
    words: Sequence[str] | str = (),
    unrelated: Sequence[str] | Batch | None = None,
    max_new_tokens: int = 16,
    chat: bool = False,
    plurals: bool = True,
    reason: str = "",
) -> tuple[ValueVectorEdit, UseCaseReport]:
    """Suppress a concept by erasing its neurons' value vectors (``w_i ← 0``).

    Args:
        model: the model.
        neurons: ``[n, 2]`` the concept's neurons (e.g. ``MultimodalNeurons.concept_neurons("dog")``).
        processor, prompts, words, unrelated: optional: when given, the report holds the concept words' rates in
            the greedy answers to ``prompts`` (and ``unrelated``) before / after.
        plurals: count "-s"/"-es" forms as the concept (default True).

    Returns:
        ``(edit, report)``.

    Example:
        >>> edit, report = suppress_concept(model, dog_neurons, processor=proc, prompts=batch, words=["dog", "puppy"])
    """
    chosen = _given_neurons(model, neurons)
    words = [words] if isinstance(words, str) else list(words)
    edit = ValueVectorEdit.erase(model, chosen, reason=reason or f"suppress concept {', '.join(words) or '?'}")
    report = UseCaseReport("suppress_concept", "erase", {"concept": ", ".join(words)}, chosen.tolist())
    if prompts is not None or unrelated is not None:
        if processor is None:
            raise NeuronscopeError("give the processor (tokenizer) to measure the concept's rate in answers")
        if not words:
            raise NeuronscopeError("give the concept's words to measure its rate in answers")
        batch = None if prompts is None else prompt_batch(processor, prompts, model, chat)
        unrelated_batch = None if unrelated is None else prompt_batch(processor, unrelated, model, chat)
        measure_answers(model, processor, edit, report, batch, unrelated_batch, words, max_new_tokens=max_new_tokens,
                plurals=plurals)
    return edit, report


__all__ = ["UseCaseReport", "measure_answers", "remove_word", "replace_word", "suppress_concept"]
