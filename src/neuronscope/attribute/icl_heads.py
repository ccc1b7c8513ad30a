"""In-context heads (Yu & Ananiadou, EMNLP 2024, "locate-and-project"): locate them, then project what each one
writes from every position.

Definitions (docs/ICL.md), for an ICL prompt whose answer is read at the last position ``t``:

- **ICL prediction**: the class whose label token has the highest logit at ``t`` (argmax over the label set).
- **Locate by LPI**: each head's output at ``t`` scored by the log-probability increase of the predicted label's
  token (:func:`~neuronscope.attribute.log_probability_increase.head_log_probability_increase`, frozen final
  norm, full vocabulary). **Locate by ablation**: ``log p(pred) − log p(pred | head zeroed at t)`` (the head's
  slice of the output projection's input set to 0 at ``t``; other positions untouched). Both are averaged over
  the prompts that predict each class ("foo-heads", "bar-heads") and combined as the mean over classes.

The per-position projection of each head's write is :mod:`neuronscope.attribute.icl_projection`.

Example:
    >>> icl = encode_icl(tokenizer, sample_prompts(data, n_prompts=32, counts=[2, 2], label_words=["foo", "bar"]))
    >>> heads = locate_in_context_heads(model, icl, method="lpi")
    >>> top = heads.top(3)                                          # [3, 2] (layer, head)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from neuronscope.attribute.log_probability_increase import (
    head_log_probability_increase,
)
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs.icl import ICLBatch
from neuronscope.inputs.targets import token_targets
from neuronscope.models.adapter import get_adapter
from neuronscope.results.base import JsonResult
from neuronscope.trace.intervene import ablate_heads, intervene
from neuronscope.trace.last_step import Condition, last_position_logits


# -- pure math ---------------------------------------------------------------------------------------------------
def label_probabilities(label_scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the label set: ``[B, C]`` logits (or full-vocabulary log-probabilities) → ``[B, C]``."""
    return label_scores.float().softmax(-1)


def group_means(values: torch.Tensor, groups: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values [B, ...]`` over the rows of each group ``groups [B]``: ``[G, ...]`` (NaN for an empty
    group) and the counts ``[G]``.

    Example:
        >>> group_means(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 1]), 3)
        (tensor([2., 5., nan]), tensor([2, 1, 0]))
    """
    counts = torch.bincount(groups.long(), minlength=n_groups)[:n_groups]
    flat = values.float().reshape(values.shape[0], -1)
    sums = torch.zeros(n_groups, flat.shape[1]).index_add_(0, groups.long(), flat)
    means = sums / counts[:, None].clamp(min=1)
    means[counts == 0] = float("nan")
    return means.reshape(n_groups, *values.shape[1:]), counts


def head_count(fraction: float, n_layers: int, n_heads: int) -> int:
    """``ceil(fraction × layers × heads)``, at least 1 (e.g. 1 % of SmolLM2-135M's 270 heads = 3)."""
    if not 0 < fraction <= 1:
        raise NeuronscopeError(f"the fraction of heads must be in (0, 1], got {fraction}")
    return max(1, math.ceil(fraction * n_layers * n_heads - 1e-9))


def top_heads(scores: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` highest-scoring heads of ``scores [L, H]`` as ``[n, 2]`` (layer, head) rows, best first."""
    flat = torch.nan_to_num(scores.float(), nan=-math.inf).flatten()
    index = flat.topk(min(n, flat.numel())).indices
    return torch.stack([index // scores.shape[1], index % scores.shape[1]], dim=1)


def random_heads(n: int, n_layers: int, n_heads: int, generator: torch.Generator,
                 exclude: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` distinct random heads ``[n, 2]`` (never one of ``exclude [m, 2]``)."""
    banned = set() if exclude is None else {int(layer) * n_heads + int(head) for layer, head in exclude.tolist()}
    pool = torch.tensor([i for i in range(n_layers * n_heads) if i not in banned])
    if n > pool.numel():
        raise NeuronscopeError(f"cannot draw {n} random heads from {pool.numel()}")
    picked = pool[torch.randperm(pool.numel(), generator=generator)[:n]]
    return torch.stack([picked // n_heads, picked % n_heads], dim=1)


# -- predictions -------------------------------------------------------------------------------------------------
def label_log_probabilities(model: nn.Module, icl: ICLBatch, conditions: Mapping[str, Condition] | None = None,
                            *, chunk_size: int = 16) -> dict[str, torch.Tensor]:
    """Full-vocabulary log-probabilities of each class's token at the last position, ``[B, C]`` per condition
    (default one condition, ``"clean"``). Conditions must change only the last position."""
    conditions = conditions or {"clean": lambda chunk: contextlib.nullcontext()}
    return last_position_logits(model, icl.batch, conditions, token_ids=icl.class_token_ids, log_softmax=True,
                                chunk_size=chunk_size)


@dataclass
class ICLAccuracy(JsonResult):
    """ICL accuracy of one prompt set: argmax over the label set vs the query's class.

    ``label_mass`` = mean full-vocabulary probability on the label tokens (how much the model answers with a
    label at all); ``predicted_share[c]`` = share of prompts predicting class ``c``.
    """

    format: ClassVar[str] = "neuronscope.icl_accuracy"

    label_words: list[str]
    n_prompts: int
    accuracy: float
    chance: float
    per_class_accuracy: list[float]
    predicted_share: list[float]
    label_mass: float
    condition: str = "clean"


def accuracy_from_log_probabilities(log_probs: torch.Tensor, query_classes: torch.Tensor,
                                    label_words: Sequence[str], condition: str = "clean") -> ICLAccuracy:
    """Pure: :class:`ICLAccuracy` from ``log_probs [B, C]`` (full-vocabulary label log-probabilities)."""
    predicted = log_probs.argmax(-1)
    correct = (predicted == query_classes).float()
    n_classes = log_probs.shape[1]
    per_class, _ = group_means(correct, query_classes, n_classes)
    share = torch.bincount(predicted, minlength=n_classes).float() / len(predicted)
    return ICLAccuracy(list(label_words), len(predicted), float(correct.mean()), 1.0 / n_classes,
                       [float(x) for x in per_class], share.tolist(), float(log_probs.exp().sum(-1).mean()),
                       condition)


def icl_accuracy(model: nn.Module, icl: ICLBatch, conditions: Mapping[str, Condition] | None = None,
                 *, chunk_size: int = 16) -> dict[str, ICLAccuracy]:
    """:class:`ICLAccuracy` per condition (default ``"clean"`` only)."""
    words = [p for p in icl.prompts[0].label_words] if icl.prompts else []
    scores = label_log_probabilities(model, icl, conditions, chunk_size=chunk_size)
    return {name: accuracy_from_log_probabilities(value, icl.query_classes, words, name)
            for name, value in scores.items()}


def ablation_condition(model: nn.Module, heads: torch.Tensor | Sequence[tuple[int, int]]) -> Condition:
    """A condition zeroing ``heads [n, 2]`` at the last position (the head site = input of ``o_proj``)."""
    interventions = ablate_heads(model, heads, positions="last")
    return lambda chunk: intervene(model, interventions)


# -- locate ------------------------------------------------------------------------------------------------------
@dataclass
class InContextHeads(JsonResult):
    """Head scores per predicted class and combined, ``[L][H]`` lists.

    ``per_label[c]``: mean over the prompts predicting class ``c`` (``counts[c]`` of them) of the LPI of the
    head's last-position output for that class's token (``method="lpi"``), or of the drop in its log-probability
    when the head is zeroed at the last position (``method="ablation"``). ``combined`` = mean over the classes
    with predictions. Higher = more important.
    """

    format: ClassVar[str] = "neuronscope.in_context_heads"

    method: str
    label_words: list[str]
    counts: list[int]
    per_label: list[list[list[float]]]
    combined: list[list[float]]
    meta: dict[str, Any] = field(default_factory=dict)

    def top(self, n: int, label: int | None = None) -> torch.Tensor:
        """The ``n`` best heads ``[n, 2]`` overall, or for one class (its "label heads")."""
        grid = torch.tensor(self.combined if label is None else self.per_label[label])
        return top_heads(grid, n)

    def summary(self) -> str:
        rows = self.top(5).tolist()
        return f"in-context heads by {self.method} ({', '.join(self.label_words)}): top {rows}"


def _combine(per_row: torch.Tensor, predicted: torch.Tensor, n_classes: int, method: str, words: list[str],
             meta: dict) -> InContextHeads:
    per_label, counts = group_means(per_row, predicted, n_classes)
    present = counts > 0
    combined = per_label[present].mean(0)
    return InContextHeads(method, words, counts.tolist(), torch.nan_to_num(per_label, nan=0.0).tolist(),
                          combined.tolist(), meta)


@torch.no_grad()
def head_lpi_per_prompt(model: nn.Module, icl: ICLBatch, *, candidates: torch.Tensor | None = None,
                        chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """LPI of every head's last-position output for the predicted label's token: ``[B, L, H]``, and the
    predicted classes ``[B]`` (argmax over the label set of the clean run)."""
    predicted = label_log_probabilities(model, icl)["clean"].argmax(-1)
    targets = token_targets(icl.batch, icl.class_token_ids[predicted][:, None])
    scores = head_log_probability_increase(model, icl.batch, targets, chunk_size=chunk_size, candidates=candidates)
    return scores.values[:, 0], predicted


@torch.no_grad()
def head_ablation_per_prompt(model: nn.Module, icl: ICLBatch, *, chunk_size: int = 16) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """``log p(pred) − log p(pred | head zeroed at the last position)`` for every head: ``[B, L, H]``, and the
    predicted classes ``[B]``. One cached step per head (the prefix is run once per chunk)."""
    adapter = get_adapter(model)
    conditions: dict[str, Condition] = {"clean": lambda chunk: contextlib.nullcontext()}
    for layer in range(adapter.n_layers):
        for head in range(adapter.n_heads):
            conditions[f"{layer}.{head}"] = ablation_condition(model, [(layer, head)])
    scores = label_log_probabilities(model, icl, conditions, chunk_size=chunk_size)
    clean = scores.pop("clean")
    predicted = clean.argmax(-1)
    pick = predicted[:, None]
    drops = torch.stack([clean.gather(1, pick)[:, 0] - value.gather(1, pick)[:, 0] for value in scores.values()], 1)
    return drops.view(len(icl), adapter.n_layers, adapter.n_heads), predicted


def locate_in_context_heads(model: nn.Module, icl: ICLBatch, *, method: str = "lpi", **options: Any
                            ) -> InContextHeads:
    """Score every head by ``method`` (``"lpi"`` or ``"ablation"``) per predicted class (see the module docstring).

    Example:
        >>> heads = locate_in_context_heads(model, icl, method="ablation")
        >>> heads.top(3, label=0)              # the three "foo-heads"
    """
    if method == "lpi":
        per_row, predicted = head_lpi_per_prompt(model, icl, **options)
    elif method == "ablation":
        per_row, predicted = head_ablation_per_prompt(model, icl, **options)
    else:
        raise NeuronscopeError(f"method must be 'lpi' or 'ablation', not {method!r}")
    words = list(icl.prompts[0].label_words) if icl.prompts else []
    meta = {"n_prompts": len(icl), "shots": icl.shots, "model": get_adapter(model).describe(),
            "score": "LPI of the head output at the last position" if method == "lpi"
            else "log p(pred) - log p(pred | head zeroed at the last position)"}
    return _combine(per_row, predicted, icl.n_classes, method, words, meta)
