"""Edit use cases: remove a word from a model's answers, replace one word by another, suppress a concept.

Each use case locates the neurons (unless given), makes a :class:`~neuronscope.edit.weights.ValueVectorEdit` and
measures it: greedy generations on the edit prompts and on unrelated prompts, before and with the edit applied. The
model is left as it was (the edit is returned, not applied).

Locating a word's neurons (DESIGN §3.1): generate greedily, find where the model says the word (its full token
sequence, with or without a leading space), and score every neuron's contribution ``a_i · <w_i, u_t>`` to the word's
first token at the positions that produced it (or with another registered method, ``locate_method``); the top-k of
the sum over occurrences are the word's neurons.

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
from typing import Any

import torch
from torch import nn

from neuronscope.aggregate.select import top_k_neurons
from neuronscope.attribute.registry import get_method
from neuronscope.edit.optimise import optimise_edit
from neuronscope.edit.weights import ValueVectorEdit, _check_neurons
from neuronscope.errors import InputError, NeuronscopeError
from neuronscope.evaluate.metrics import concept_rate, token_agreement
from neuronscope.inputs import Batch, Generation, encode_prompts, generate
from neuronscope.inputs.targets import TargetSet, _stack, prediction_targets
from neuronscope.models.adapter import get_adapter
from neuronscope.results.scores import NeuronScores

REMOVE_METHODS = ("optimised", "erase", "token_shift")
REPLACE_METHODS = ("optimised", "token_shift", "knowledge_neuron")


# -- reports ---------------------------------------------------------------------------------------------------------
@dataclass
class UseCaseReport:
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


def score_grid(scores: NeuronScores, n_layers: int, absolute: bool = False) -> torch.Tensor:
    """Scores summed over examples and targets on the model's full grid ``[n_layers, d_ff]`` (float32).

    Methods run on some ``layers`` return those layers only (listed in ``meta["layers"]``); they are put back in
    place here, other layers are 0. ``absolute`` sums ``|score|`` (e.g. CNA differences of either sign).

    Example:
        >>> grid = score_grid(contribution(model, batch, targets, layers=[5, 6]), n_layers=30)   # rows 5, 6 filled
    """
    dense = scores.dense().float()
    summed = (dense.abs() if absolute else dense).sum(dim=(0, 1))  # [listed layers, d_ff]
    layers = scores.meta.get("layers")
    if layers is None:
        layers = list(range(summed.shape[0]))
    if len(layers) != summed.shape[0]:
        raise NeuronscopeError(f"scores have {summed.shape[0]} layers but their meta lists {len(layers)}")
    grid = torch.zeros(n_layers, summed.shape[1])
    grid[torch.as_tensor(layers, dtype=torch.long)] = summed.cpu()
    return grid


# -- plumbing ----------------------------------------------------------------------------------------------------
def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def _device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def as_batch(processor: Any, prompts: Sequence[str] | str | Batch, model: nn.Module, chat: bool = False) -> Batch:
    """A :class:`Batch` on the model's input device: prompts are encoded (left-padded), batches are moved."""
    batch = prompts if isinstance(prompts, Batch) else encode_prompts(processor, prompts, chat=chat, model=model)
    return batch.to(_device(model))


def continued_batch(batch: Batch, generation: Generation) -> Batch:
    """The batch of prompt + generated tokens (``generation.sequences``), ready for one forward pass.

    Positions in it are those of :meth:`Generation.producing_positions`. Text models get position ids that skip the
    left padding; image inputs (``pixel_values`` …) are kept as they are.
    """
    sequences = generation.sequences
    mask = batch.inputs["attention_mask"]
    steps = sequences.shape[1] - mask.shape[1]
    extended = torch.cat([mask, mask.new_ones(mask.shape[0], steps).to(mask.device)], dim=1)
    inputs = {**batch.inputs, "input_ids": sequences.to(mask.device), "attention_mask": extended}
    if "position_ids" in batch.inputs:
        inputs["position_ids"] = (extended.long().cumsum(-1) - 1).clamp(min=0)
    return Batch(inputs, batch.texts, extended.sum(-1).cpu(), batch.images, batch.meta)


def word_variants(processor: Any, word: str) -> list[list[int]]:
    """The token sequences of ``word`` with and without a leading space (distinct, non-empty)."""
    tokenizer = _tokenizer(processor)
    variants: list[list[int]] = []
    for text in (" " + word.strip(), word.strip()):
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        # sentencepiece tokenizers may emit a lone prefix marker first
        if len(ids) > 1 and tokenizer.convert_ids_to_tokens(ids[0]) in ("▁", "Ġ", " "):
            ids = ids[1:]
        unk = getattr(tokenizer, "unk_token_id", None)
        if ids and unk not in ids and ids not in variants:
            variants.append(ids)
    if not variants:
        raise InputError(f"the word {word!r} is not in the tokenizer's vocabulary: check its spelling")
    return variants


def find_word(tokens: torch.Tensor, variants: Sequence[Sequence[int]], stop: set[int] = frozenset()) -> list[list[int]]:
    """Per row of generated ``tokens [batch, steps]``, the steps where one of the token sequences ``variants``
    starts (before the row's first stop token).

    Example:
        >>> find_word(torch.tensor([[5, 7, 8, 5, 7]]), [[5, 7]])
        [[0, 3]]
    """
    found = []
    for row in tokens.tolist():
        end = next((i for i, token in enumerate(row) if token in stop), len(row))
        row = row[:end]
        steps = sorted({step for variant in variants for step in range(len(row) - len(variant) + 1)
                        if row[step:step + len(variant)] == list(variant)})
        found.append(steps)
    return found


def _stop_ids(processor: Any) -> set[int]:
    tokenizer = _tokenizer(processor)
    return {tokenizer.pad_token_id, tokenizer.eos_token_id} - {None}


def occurrence_targets(generation: Generation, steps: Sequence[Sequence[int]], token_ids: Sequence[int] | None = None,
                       labels: Sequence[str] | None = None) -> TargetSet:
    """Targets at the positions that produced the generated tokens at ``steps`` (per row).

    ``token_ids`` (one per row) replaces the generated token (e.g. a replacement word); default the token said.
    """
    positions = generation.producing_positions()
    rows = []
    for r, row_steps in enumerate(steps):
        row = []
        for step in row_steps:
            token = int(generation.tokens[r, step]) if token_ids is None else int(token_ids[r])
            row.append((token, int(positions[step]), labels[r] if labels else str(token)))
        rows.append(row)
    return _stack(rows)


@dataclass
class WordLocation:
    """Where a word was said and its neurons.

    Attributes:
        neurons: ``[k, 2]`` top neurons (sum of scores over the occurrences).
        batch: prompt + generated tokens (:func:`continued_batch`).
        targets: the word's first token at each occurrence's producing position in ``batch``.
        steps: per row, the generation steps where the word starts.
        generation: the greedy generation.
    """

    neurons: torch.Tensor
    batch: Batch
    targets: TargetSet
    steps: list[list[int]]
    generation: Generation

    @property
    def occurrences(self) -> int:
        return sum(len(row) for row in self.steps)


def locate_word(
    model: nn.Module,
    processor: Any,
    batch: Batch,
    word: str,
    *,
    top_k: int = 20,
    max_new_tokens: int = 16,
    locate_method: str = "contribution",
    generation: Generation | None = None,
    contrast: Batch | None = None,
    **method_options: Any,
) -> WordLocation:
    """Generate greedily, find where the model says ``word`` and return the top-``top_k`` neurons behind it.

    Args:
        model, processor, batch: the model, its tokenizer/processor and left-padded prompts.
        word: the word (its first token is the target at each occurrence).
        top_k: how many neurons (highest summed score).
        max_new_tokens: length of the greedy answers.
        locate_method: a registered attribution method (default ``"contribution"``, Pan et al.).
        generation: reuse an existing greedy generation of ``batch``.
        contrast: prompts whose own answers the neurons should not carry (e.g. other facts): neurons are ranked by
            ``mean score for the word − max(0, mean score for each contrast prompt's own next token)``, so that
            neurons writing a whole class of answers (every capital city) rank below those specific to the word.
        **method_options: passed to the method (``layers=``, ``site=`` …).

    Raises:
        NeuronscopeError: the model never says the word in its answers (nothing to locate).

    Example:
        >>> where = locate_word(model, tokenizer, encode_prompts(tokenizer, ["The capital of France is"]), "Paris")
        >>> where.neurons.shape                      # [20, 2]
    """
    if top_k < 1:
        raise NeuronscopeError(f"top_k must be at least 1, got {top_k}")
    if generation is None:
        generation = generate(model, processor, batch, max_new_tokens=max_new_tokens)
    steps = find_word(generation.tokens.cpu(), word_variants(processor, word), _stop_ids(processor))
    if not any(steps):
        raise NeuronscopeError(
            f"the model never says {word!r} in its greedy answers to these prompts (answers: "
            f"{generation.texts[:3]}...): give prompts where it does, a longer max_new_tokens, or the neurons"
        )
    full = continued_batch(batch, generation)
    targets = occurrence_targets(generation, steps, labels=[word] * len(steps))
    keep = [r for r, row in enumerate(steps) if row]
    sub_targets = TargetSet(targets.token_ids[keep], targets.positions[keep], targets.valid[keep],
                            [targets.labels[r] for r in keep])
    function = get_method(locate_method).function
    n_layers = get_adapter(model).n_layers
    scores = function(model, full.select(keep), sub_targets, **method_options)
    grid = score_grid(scores, n_layers) / int(sub_targets.valid.sum())
    if contrast is not None:
        own = prediction_targets(model, contrast)
        against = function(model, contrast, own, **method_options)
        positive = NeuronScores(against.dense().clamp(min=0), meta={"layers": against.meta.get("layers")})
        grid = grid - score_grid(positive, n_layers) / len(contrast)
    neurons, _ = top_k_neurons(grid, top_k)
    return WordLocation(neurons, full, targets, steps, generation)


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


def measure(
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
    return _check_neurons(get_adapter(model), torch.as_tensor(neurons, dtype=torch.long).reshape(-1, 2))


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
    batch = as_batch(processor, prompts, model, chat)
    unrelated_batch = None if unrelated is None else as_batch(processor, unrelated, model, chat)
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
    measure(model, processor, edit, report, batch, unrelated_batch, [word], max_new_tokens=max_new_tokens,
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
    batch = as_batch(processor, prompts, model, chat)
    unrelated_batch = None if unrelated is None else as_batch(processor, unrelated, model, chat)
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
    measure(model, processor, edit, report, batch, unrelated_batch, [source_word, target_word],
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
        batch = None if prompts is None else as_batch(processor, prompts, model, chat)
        unrelated_batch = None if unrelated is None else as_batch(processor, unrelated, model, chat)
        measure(model, processor, edit, report, batch, unrelated_batch, words, max_new_tokens=max_new_tokens,
                plurals=plurals)
    return edit, report


__all__ = [
    "UseCaseReport", "WordLocation", "as_batch", "continued_batch", "find_word", "locate_word", "measure",
    "occurrence_targets", "remove_word", "replace_word", "score_grid", "suppress_concept", "word_variants",
]
