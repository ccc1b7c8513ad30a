"""Where a model says a word, and the neurons behind it (DESIGN §3.1).

Generate greedily, find where the model says the word (its full token sequence, with or without a leading
space), and score every neuron's contribution ``a_i · <w_i, u_t>`` to the word's first token at the positions that
produced it (or with another registered method); the top-k of the mean over occurrences are the word's neurons.

Example:
    >>> where = locate_word(model, tokenizer, prompt_batch(tokenizer, ["The capital of France is"], model), "Paris")
    >>> where.neurons.shape                      # [20, 2]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neuronscope.aggregate.select import top_k_neurons
from neuronscope.attribute.registry import get_method
from neuronscope.errors import InputError, NeuronscopeError
from neuronscope.inputs.batch import Batch, Generation, extend_batch, generate
from neuronscope.inputs.targets import TargetSet, _stack, prediction_targets, word_pieces
from neuronscope.models.adapter import get_adapter
from neuronscope.results.scores import NeuronScores


def word_variants(processor: Any, word: str) -> list[list[int]]:
    """The token sequences a model emits for ``word`` after a space and right after text (distinct, non-empty;
    see :func:`~neuronscope.inputs.targets.word_pieces`)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    unk = getattr(tokenizer, "unk_token_id", None)
    variants: list[list[int]] = []
    for leading_space in (True, False):
        ids = word_pieces(tokenizer, word.strip(), leading_space)
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
    tokenizer = getattr(processor, "tokenizer", processor)
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
        batch: prompt + generated tokens (:func:`~neuronscope.inputs.batch.extend_batch`).
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
        >>> where = locate_word(model, tokenizer, prompt_batch(tokenizer, ["The capital of France is"], model), "Paris")
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
    full = extend_batch(batch, generation.tokens)
    targets = occurrence_targets(generation, steps, labels=[word] * len(steps))
    keep = [r for r, row in enumerate(steps) if row]
    sub_targets = TargetSet(targets.token_ids[keep], targets.positions[keep], targets.valid[keep],
                            [targets.labels[r] for r in keep])
    function = get_method(locate_method).function
    n_layers = get_adapter(model).n_layers
    scores = function(model, full.select(keep), sub_targets, **method_options)
    grid = scores.grid(n_layers) / int(sub_targets.valid.sum())
    if contrast is not None:
        own = prediction_targets(model, contrast)
        against = function(model, contrast, own, **method_options)
        positive = NeuronScores(against.dense().clamp(min=0), meta={"layers": against.meta.get("layers")})
        grid = grid - positive.grid(n_layers) / len(contrast)
    neurons, _ = top_k_neurons(grid, top_k)
    return WordLocation(neurons, full, targets, steps, generation)
