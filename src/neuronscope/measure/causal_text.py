"""Causal effect and specificity of a neuron set on generated text, against random neurons (Pan et al. 2024's
caption measures, :func:`neuronscope.measure.metrics.causal_effect` / :func:`~neuronscope.measure.metrics.
specificity`, on a text model's greedy continuations).

The concept's prompts are continued greedily without and with the set suppressed (its activations x0 at every
position, the prompt's and the generated ones'); the **causal effect** is the drop of the concept's rate (the
fraction of continuations that mention one of its words). The other concepts' prompts are continued the same way:
**specificity** = the concept's drop − the mean drop of the others' own rates (high: the set removes its concept
only). The same for ``n_random`` random sets with the set's count in each layer (never its own neurons).

Example:
    >>> rows = causal_effect_against_random(model, tok, (batch, ["red"]), {"blue": (other, ["blue"])},
    ...                                     neurons, n_random=5)
    >>> rows[0]["drop"], rows[0]["specificity"]          # the located set; rows[1:] random sets
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from neuronscope.inputs import Batch
from neuronscope.inputs.batch import generate
from neuronscope.measure.baselines import random_neurons_like
from neuronscope.measure.metrics import ConceptCaptions, specificity
from neuronscope.models.adapter import get_adapter
from neuronscope.trace import intervene, scale_neurons

Concept = tuple[Batch, Sequence[str]]


def continuations(model: nn.Module, tokenizer: Any, batch: Batch, neurons: torch.Tensor | None,
                  max_new_tokens: int) -> list[str]:
    """Greedy continuations of ``batch``, with ``neurons [n, 2]`` suppressed at every position (None: none)."""
    changes = [] if neurons is None or not len(neurons) else scale_neurons(neurons, 0.0, "all")
    with intervene(model, changes):
        return generate(model, tokenizer, batch, max_new_tokens=max_new_tokens).texts


def causal_effect_against_random(
    model: nn.Module,
    tokenizer: Any,
    concept: Concept,
    others: Mapping[str, Concept],
    neurons: torch.Tensor,
    *,
    n_random: int = 5,
    seed: int = 0,
    max_new_tokens: int = 12,
) -> list[dict[str, Any]]:
    """One row per neuron set (the given one first, then ``random k``): the concept's rate before / after, drop,
    relative drop, the others' mean drop and the specificity; plus the continuations after.

    Args:
        concept: the concept's prompts (a left-padded batch) and its words (name first, then synonyms).
        others: name -> (prompts, words) of the other concepts (may be empty: specificity = the drop).
        neurons: ``[n, 2]`` the set.
        n_random, seed: random sets with the same count per layer.
        max_new_tokens: continuation length.
    """
    adapter = get_adapter(model)
    neurons = torch.as_tensor(neurons, dtype=torch.long).reshape(-1, 2)
    before = continuations(model, tokenizer, concept[0], None, max_new_tokens)
    others_before = {name: continuations(model, tokenizer, batch, None, max_new_tokens)
                     for name, (batch, _) in others.items()}
    draws = (random_neurons_like(neurons, adapter.d_ff, n_draws=n_random, seed=seed, exclude_given=True,
                                 n_layers=adapter.n_layers) if n_random else [])
    rows = []
    for name, chosen in [("located", neurons)] + [(f"random {i}", draw) for i, draw in enumerate(draws)]:
        after = continuations(model, tokenizer, concept[0], chosen, max_new_tokens)
        report = specificity(
            ConceptCaptions(list(concept[1]), before, after),
            {other: ConceptCaptions(list(words), others_before[other],
                                    continuations(model, tokenizer, batch, chosen, max_new_tokens))
             for other, (batch, words) in others.items()})
        rows.append({"set": name, "neurons": len(chosen), "rate_before": report.target.rate_before,
                     "rate_after": report.target.rate_after, "drop": report.target.drop,
                     "relative_drop": report.target.relative_drop, "mean_other_drop": report.mean_other_drop,
                     "specificity": report.specificity,
                     "other_drops": {other: effect.drop for other, effect in report.others.items()},
                     "continuations_before": before, "continuations_after": after})
    return rows


__all__ = ["causal_effect_against_random", "continuations"]
