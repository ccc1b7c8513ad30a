"""Evaluate a value-vector edit as the knowledge-editing literature does, against random edits of the same size.

Metrics (definitions in :mod:`neuronscope.measure.metrics`; ROME, Meng et al. 2022, and EasyEdit, Wang et al. 2024):

- **reliability**: on the edit prompts, the fraction where the edit succeeds at the next token. ``goal="promote"``
  (a new answer): the target is top-1 (``rule="top1"``, EasyEdit) or more likely than the old answer
  (``rule="target_over_source"``, ROME's efficacy). ``goal="demote"`` (remove a word): the target is no longer
  top-1.
- **generalisation**: the same on paraphrases of the edit prompts.
- **locality**: on unrelated prompts, the token agreement of greedy answers before / after (1 = unchanged) and the
  mean ``KL(original ‖ edited)`` of next-token distributions at the last prompt position (0 = unchanged).
- **fluency**: ROME's n-gram entropy of the edited model's greedy answers to the edit prompts and paraphrases.

The random baseline applies, for each of ``n_random`` draws, an edit of as many random neurons in each layer as the
edit has (never the edit's own neurons), with the same delta vectors moved onto them within each layer (so the same
norms; ``random_deltas="random_directions"`` draws Gaussian directions with the same norms instead). An erase edit
is compared with erasing the random neurons. A located edit should beat these by a wide margin.

Example:
    >>> result = evaluate_edit(model, tok, edit, edit_prompts=["The capital of France is"], targets="Rome",
    ...                        paraphrases=["France's capital city is"], unrelated_prompts=["The capital of Japan is"])
    >>> result.as_dict()["edit"]["reliability"], result.random_summary()["reliability"]["mean"]
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from neuronscope.edit.weights import ValueVectorEdit
from neuronscope.errors import InputError, NeuronscopeError
from neuronscope.inputs.batch import Batch, generate, prompt_batch
from neuronscope.inputs.targets import word_token
from neuronscope.measure.baselines import random_neurons_like
from neuronscope.measure.edit_metrics import edit_success, locality_kl, token_agreement
from neuronscope.measure.fluency import fluency
from neuronscope.measure.metrics import summarise
from neuronscope.measure.probability import last_logits
from neuronscope.models.adapter import get_adapter
from neuronscope.results.base import JsonResult

GOALS = ("promote", "demote")
RANDOM_DELTAS = ("same", "random_directions")
TokenSpec = str | int | Sequence[str | int]


@dataclass
class EditScores(JsonResult):
    """One model state's metrics (see the module docstring); None where the prompts were not given."""

    format: ClassVar[str] = "neuronscope.edit_scores"

    reliability: float
    generalisation: float | None = None
    locality_agreement: float | None = None
    locality_kl: float | None = None
    fluency: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {"reliability": self.reliability, "generalisation": self.generalisation,
                "locality_agreement": self.locality_agreement, "locality_kl": self.locality_kl,
                "fluency": self.fluency}


@dataclass
class EditEvaluation(JsonResult):
    """Metrics of the unedited model (``before``), of the edit, and of each random edit (``random``)."""

    format: ClassVar[str] = "neuronscope.edit_evaluation"

    goal: str
    rule: str
    before: EditScores
    edit: EditScores
    random: list[EditScores] = field(default_factory=list)
    random_neurons: list[list[list[int]]] = field(default_factory=list)
    n_neurons: int = 0

    def random_summary(self) -> dict[str, dict[str, float] | None]:
        """Mean / std / min / max / n of each metric over the random draws (None when not measured)."""
        out: dict[str, dict[str, float] | None] = {}
        for name in ("reliability", "generalisation", "locality_agreement", "locality_kl", "fluency"):
            values = [getattr(scores, name) for scores in self.random]
            values = [value for value in values if value is not None]
            out[name] = summarise(values).as_dict() if values else None
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"goal": self.goal, "rule": self.rule, "n_neurons": self.n_neurons, "before": self.before.as_dict(),
                "edit": self.edit.as_dict(), "random": [scores.as_dict() for scores in self.random],
                "random_summary": self.random_summary(), "random_neurons": self.random_neurons}

    def summary(self) -> str:
        lines = [f"{self.goal} ({self.rule}, {self.n_neurons} neurons)"]
        for name in ("reliability", "generalisation", "locality_agreement", "locality_kl", "fluency"):
            before, after = getattr(self.before, name), getattr(self.edit, name)
            if before is None and after is None:
                continue
            line = f"  {name}: {_number(before)} -> {_number(after)}"
            spread = self.random_summary()[name]
            if spread is not None:
                line += f" (random edits: mean {spread['mean']:.4g}, n {int(spread['n'])})"
            lines.append(line)
        return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def token_ids(processor: Any, spec: TokenSpec, n: int, name: str = "targets") -> torch.Tensor:
    """``[n]`` token ids from a word or id for all prompts, or one per prompt (words: first sub-token, leading
    space)."""
    items = [spec] * n if isinstance(spec, (str, int)) else list(spec)
    if len(items) != n:
        raise InputError(f"{name}: give one word/id for all {n} prompts or one per prompt, not {len(items)}")
    ids = []
    for item in items:
        if isinstance(item, str):
            if processor is None:
                raise NeuronscopeError(f"{name} are words: give the processor (tokenizer) too, or token ids")
            ids.append(word_token(processor, item))
        else:
            ids.append(int(item))
    return torch.tensor(ids, dtype=torch.long)


def success_rate(logits: torch.Tensor, targets: torch.Tensor, sources: torch.Tensor | None, goal: str,
                 rule: str) -> float:
    """Reliability of ``logits [n, vocab]``: promote → mean :func:`edit_success`; demote → target not top-1."""
    if goal == "demote":
        return float((~edit_success(logits, targets, rule="top1")).double().mean())
    return float(edit_success(logits, targets, sources, rule=rule).double().mean())


def _stop(processor: Any) -> set[int]:
    tokenizer = getattr(processor, "tokenizer", processor)
    return {tokenizer.pad_token_id, tokenizer.eos_token_id} - {None}


def _cut(tokens: torch.Tensor, stop: set[int]) -> list[list[int]]:
    out = []
    for row in tokens.tolist():
        end = next((i for i, token in enumerate(row) if token in stop), len(row))
        out.append(row[:end] or row[:1])
    return out


def random_edits(model: nn.Module, edit: ValueVectorEdit, n_random: int = 3, seed: int = 0,
                 random_deltas: str = "same") -> list[ValueVectorEdit]:
    """Edits of random neurons with the edit's count in each layer (excluding its own neurons) and the same delta
    norms: the same deltas moved within each layer (``"same"``) or random directions (``"random_directions"``);
    erase edits erase the random neurons.

    Example:
        >>> baselines = random_edits(model, edit, n_random=3)
    """
    if random_deltas not in RANDOM_DELTAS:
        raise NeuronscopeError(f"random_deltas {random_deltas!r}: use one of {', '.join(RANDOM_DELTAS)}")
    adapter = get_adapter(model)
    draws = random_neurons_like(edit.neurons, adapter.d_ff, n_draws=n_random, seed=seed, exclude_given=True,
                                n_layers=adapter.n_layers)
    # random_neurons_like orders each draw by layer, then index: order the edit's rows the same way
    order = torch.argsort(edit.neurons[:, 0] * adapter.d_ff + edit.neurons[:, 1])
    deltas = edit.deltas[order]
    generator = torch.Generator().manual_seed(seed + 1)
    out = []
    for draw in draws:
        reason = f"random baseline of: {edit.reason or edit.method}"
        if edit.method == "erase":
            out.append(ValueVectorEdit.erase(model, draw, reason=reason))
            continue
        moved = deltas
        if random_deltas == "random_directions":
            directions = torch.randn(deltas.shape, generator=generator)
            moved = directions / directions.norm(dim=-1, keepdim=True) * deltas.norm(dim=-1, keepdim=True)
        out.append(ValueVectorEdit.from_deltas(model, draw, moved, f"random_{edit.method}",
                                               {"random_deltas": random_deltas, "seed": seed}, reason))
    return out


def evaluate_edit(
    model: nn.Module,
    processor: Any,
    edit: ValueVectorEdit,
    *,
    edit_prompts: Sequence[str] | Batch,
    targets: TokenSpec,
    paraphrases: Sequence[str] | Batch | None = None,
    paraphrase_targets: TokenSpec | None = None,
    unrelated_prompts: Sequence[str] | Batch | None = None,
    goal: str = "promote",
    rule: str = "top1",
    sources: TokenSpec | None = None,
    paraphrase_sources: TokenSpec | None = None,
    random_baseline: bool = True,
    n_random: int = 3,
    random_deltas: str = "same",
    seed: int = 0,
    max_new_tokens: int = 20,
    chat: bool = False,
) -> EditEvaluation:
    """Reliability, generalisation, locality and fluency of ``edit``, before / after, and for random edits.

    Args:
        model, processor: the (unedited) model and its tokenizer; the model is left unedited.
        edit: the edit to evaluate.
        edit_prompts: the prompts it was made for (strings, encoded with ``chat``, or a :class:`Batch`).
        targets: the new answer (``promote``) or the word to remove (``demote``): a word or token id for all
            prompts, or one per prompt. Words: first sub-token with a leading space.
        paraphrases, paraphrase_targets: paraphrased prompts (generalisation); their targets default to
            ``targets`` when it is one for all or when there are as many paraphrases as edit prompts.
        unrelated_prompts: prompts that should not change (locality).
        goal: ``"promote"`` (default) or ``"demote"``.
        rule: ``"top1"`` (default) or ``"target_over_source"`` (needs ``sources``, promote only).
        sources, paraphrase_sources: the old answers, for ``rule="target_over_source"``.
        random_baseline, n_random, random_deltas, seed: the random edits (see :func:`random_edits`).
        max_new_tokens: length of the greedy answers (locality agreement, fluency).

    Returns:
        :class:`EditEvaluation`.

    Example:
        >>> result = evaluate_edit(model, tok, edit, edit_prompts=prompts, targets="Rome",
        ...                        unrelated_prompts=others)
        >>> result.edit.reliability, result.random_summary()["reliability"]["mean"]
    """
    if goal not in GOALS:
        raise NeuronscopeError(f"unknown goal {goal!r}: use one of {', '.join(GOALS)}")
    if rule == "target_over_source" and (sources is None or goal == "demote"):
        raise NeuronscopeError('rule "target_over_source" needs goal="promote" and sources (the old answers)')
    edit_batch = prompt_batch(processor, edit_prompts, model, chat)
    target_ids = token_ids(processor, targets, len(edit_batch))
    source_ids = None if sources is None else token_ids(processor, sources, len(edit_batch), "sources")
    para_batch = para_ids = para_sources = None
    if paraphrases is not None:
        para_batch = prompt_batch(processor, paraphrases, model, chat)
        spec = paraphrase_targets
        if spec is None:
            if isinstance(targets, (str, int)) or len(para_batch) == len(edit_batch):
                spec = targets
            else:
                raise InputError("give paraphrase_targets: one target for all paraphrases or one per paraphrase")
        para_ids = token_ids(processor, spec, len(para_batch), "paraphrase_targets")
        if rule == "target_over_source":
            source_spec = paraphrase_sources if paraphrase_sources is not None else sources
            para_sources = token_ids(processor, source_spec, len(para_batch), "paraphrase_sources")
    unrelated = None if unrelated_prompts is None else prompt_batch(processor, unrelated_prompts, model, chat)
    stop = _stop(processor)
    fluency_batches = [b for b in (edit_batch, para_batch) if b is not None]

    base_unrelated_logits = base_unrelated_tokens = None
    if unrelated is not None:
        base_unrelated_logits = last_logits(model, unrelated)
        base_unrelated_tokens = _cut(generate(model, processor, unrelated, max_new_tokens).tokens.cpu(), stop)

    def scores_of(candidate: ValueVectorEdit | None) -> EditScores:
        context = candidate.applied(model) if candidate is not None else contextlib.nullcontext()
        with context:
            result = EditScores(success_rate(last_logits(model, edit_batch), target_ids, source_ids, goal, rule))
            if para_batch is not None:
                result.generalisation = success_rate(last_logits(model, para_batch), para_ids, para_sources, goal,
                                                     rule)
            if unrelated is not None:
                if candidate is None:
                    result.locality_agreement, result.locality_kl = 1.0, 0.0
                else:
                    tokens = _cut(generate(model, processor, unrelated, max_new_tokens).tokens.cpu(), stop)
                    result.locality_agreement = token_agreement(base_unrelated_tokens, tokens)
                    result.locality_kl = locality_kl(base_unrelated_logits, last_logits(model, unrelated))
            texts = [text for b in fluency_batches for text in generate(model, processor, b, max_new_tokens).texts]
            result.fluency = fluency(texts)
        return result

    evaluation = EditEvaluation(goal, rule, scores_of(None), scores_of(edit), n_neurons=len(edit.neurons))
    if random_baseline and n_random > 0:
        for baseline in random_edits(model, edit, n_random, seed, random_deltas):
            evaluation.random.append(scores_of(baseline))
            evaluation.random_neurons.append(baseline.neurons.tolist())
    return evaluation


__all__ = ["EditEvaluation", "EditScores", "evaluate_edit", "random_edits", "success_rate",
           "token_ids"]
