"""Majority-label and recency bias of ICL, their explanation by in-context heads' attention, and a mitigation.

Bias, for prompts each of which favours one class ``f`` (its majority class, or the class of its most recent
demonstrations), built so that every query is seen once with each class favoured (e.g. 6:2 and 2:6 label mixes,
or label-sorted and reverse-sorted orders of the same demonstrations):

    bias_probability = mean p(f) − 1/C        bias_rate = mean 1[prediction = f] − 1/C

with ``p`` the softmax over the label set. A model that ignores the mix (or the order) scores 0 on both: each of
its per-query predictions equals ``f`` in exactly one of the ``C`` variants.

Explanation: the attention mass that each class's label positions get from the last position in the in-context
heads (``favoured`` vs ``other`` classes, in total and per demonstration, and per demonstration slot).

Mitigation (the paper's exact rule could not be recovered; docs/ICL.md): re-weight the in-context heads'
attention from the last position to the label positions, keeping its total (``renormalise="sources"``):

- majority: factor ``1 / n_c`` for the label positions of class ``c`` (``n_c`` = its demonstrations), scaled so a
  balanced prompt gets factors 1 (:func:`class_balance_factors`): each class gets the same share;
- recency: factor ``mean(prior) / prior_j`` for slot ``j``, ``prior`` = the head's mean attention to the label of
  the ``j``-th demonstration on calibration prompts (balanced, random order): the head's positional preference is
  divided out (:func:`slot_factors`).

The same rule applied to as many random heads is the control.

Example:
    >>> result = measure_bias(model, icl, majority_classes(icl.demo_classes, 2), heads, kind="majority",
    ...                       factors_for=lambda h: majority_factors(icl, h), control_heads=draws)
    >>> result.before["probability"], result.mitigated["probability"], result.reduction
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from neuronscope.errors import NeuronscopeError
from neuronscope.inputs.icl import ICLBatch
from neuronscope.models.adapter import get_adapter
from neuronscope.results.base import JsonResult
from neuronscope.trace.attention_edit import AttentionRecord, AttentionReweighting, edited_attention
from neuronscope.trace.last_step import Chunk, last_position_logits


# -- pure math ---------------------------------------------------------------------------------------------------
def majority_classes(demo_classes: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The most frequent class of each row ``[B, k]`` → ``[B]``; raises on a tie."""
    counts = torch.nn.functional.one_hot(demo_classes.long(), n_classes).sum(1)  # [B, C]
    top = counts.topk(min(2, n_classes), dim=-1).values
    if n_classes > 1 and bool((top[:, 0] == top[:, 1]).any()):
        raise NeuronscopeError("some prompts have no single majority class: use an imbalanced label mix")
    return counts.argmax(-1)


def recent_classes(demo_classes: torch.Tensor) -> torch.Tensor:
    """The class of each row's last demonstration ``[B, k]`` → ``[B]``."""
    return demo_classes[:, -1].clone()


def class_balance_factors(demo_classes: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``w_j = k / (C' · n_{c_j})`` for demonstration ``j`` of class ``c_j`` (``C'`` = classes present): each
    class's label positions get the same total weight; a balanced prompt gets all ones. ``[B, k]`` → ``[B, k]``.

    Example:
        >>> class_balance_factors(torch.tensor([[0, 0, 0, 1]]), 2)
        tensor([[0.6667, 0.6667, 0.6667, 2.0000]])
    """
    counts = torch.nn.functional.one_hot(demo_classes.long(), n_classes).sum(1).float()  # [B, C]
    present = (counts > 0).sum(-1, keepdim=True).float()
    return demo_classes.shape[1] / (present * counts.gather(1, demo_classes.long()))


def slot_factors(prior: torch.Tensor) -> torch.Tensor:
    """``mean(prior) / prior_j`` over the last dimension (slots): ``[..., k]`` → ``[..., k]``."""
    prior = prior.float().clamp_min(1e-9)
    return prior.mean(-1, keepdim=True) / prior


def bias_scores(label_log_probs: torch.Tensor, favoured: torch.Tensor) -> dict[str, float]:
    """``probability`` and ``rate`` bias (module docstring) from label log-probabilities ``[B, C]``."""
    probs = label_log_probs.float().softmax(-1)
    chance = 1.0 / probs.shape[1]
    picked = probs.gather(1, favoured.long()[:, None])[:, 0]
    rate = (probs.argmax(-1) == favoured).float()
    return {"probability": float(picked.mean()) - chance, "rate": float(rate.mean()) - chance}


def relative_reduction(before: float, after: float) -> float:
    """``(before − after) / before`` (NaN when there was no bias to reduce)."""
    return (before - after) / before if before > 0 else float("nan")


def majority_factors(icl: ICLBatch, heads: torch.Tensor) -> torch.Tensor:
    """:func:`class_balance_factors` of each prompt, the same for every head: ``[B, n, k]``."""
    factors = class_balance_factors(icl.demo_classes, icl.n_classes)
    return factors[:, None, :].expand(-1, torch.as_tensor(heads).reshape(-1, 2).shape[0], -1)


def recency_factors(calibration: torch.Tensor, heads: torch.Tensor, n_rows: int) -> torch.Tensor:
    """:func:`slot_factors` of each head's mean attention to each slot on calibration prompts.

    Args:
        calibration: ``[B', L, H, k]`` attention from the last position to the label positions of calibration
            prompts (:func:`label_attention` over all heads, reshaped).
        heads: ``[n, 2]``; n_rows: rows of the prompts to re-weight.

    Returns:
        ``[n_rows, n, k]``.
    """
    heads = torch.as_tensor(heads, dtype=torch.long).reshape(-1, 2)
    prior = calibration[:, heads[:, 0], heads[:, 1]].mean(0)  # [n, k]
    return slot_factors(prior)[None].expand(n_rows, -1, -1)


# -- plumbing ----------------------------------------------------------------------------------------------------
def reweighting_plans(heads: torch.Tensor, sources: torch.Tensor, factors: torch.Tensor,
                      renormalise: str = "sources") -> list[AttentionReweighting]:
    """One :class:`AttentionReweighting` per layer for heads ``[n, 2]``, label positions ``sources [B, k]`` and
    per-head factors ``[B, n, k]``."""
    heads = torch.as_tensor(heads, dtype=torch.long).reshape(-1, 2)
    plans = []
    for layer in heads[:, 0].unique().tolist():
        slots = (heads[:, 0] == layer).nonzero()[:, 0]
        plans.append(AttentionReweighting(layer, heads[slots, 1], sources, factors[:, slots], renormalise))
    return plans


def _recording(model: nn.Module, layers: list[int], into: list[tuple[Chunk, AttentionRecord]],
               plans: Sequence[AttentionReweighting] = ()) -> Callable[[Chunk], Any]:
    @contextlib.contextmanager
    def run(chunk: Chunk) -> Iterator[None]:
        selected = [p.select(chunk.rows, chunk.shift) for p in plans]
        with edited_attention(model, selected, record_layers=layers) as record:
            yield
        into.append((chunk, record))

    return run


def _gather_label_attention(records: list[tuple[Chunk, AttentionRecord]], heads: torch.Tensor,
                            labels: torch.Tensor, edited: bool = False,
                            plans: Sequence[AttentionReweighting] = ()) -> torch.Tensor:
    """``[B, n, k]`` attention from the last position to the label positions, from recorded chunks (the rows
    before the edit, or the plans' edited rows)."""
    out = torch.zeros(labels.shape[0], heads.shape[0], labels.shape[1])
    for chunk, record in records:
        index = labels[chunk.rows] - chunk.shift
        for slot, (layer, head) in enumerate(heads.tolist()):
            if edited:
                plan_heads = next(p.heads for p in plans if p.layer == layer).tolist()
                row = record.edited[layer][:, plan_heads.index(head)]
            else:
                row = record.rows[layer][:, head, 0]
            out[chunk.rows, slot] = row.cpu().gather(1, index)
    return out


@torch.no_grad()
def label_attention(model: nn.Module, icl: ICLBatch, heads: torch.Tensor | None = None, *,
                    chunk_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention from the last position to every demonstration's label position for ``heads [n, 2]`` (default
    all heads, in layer-major order): ``[B, n, k]``, and the clean label log-probabilities ``[B, C]``."""
    adapter = get_adapter(model)
    if heads is None:
        grid = torch.cartesian_prod(torch.arange(adapter.n_layers), torch.arange(adapter.n_heads))
        heads = grid.reshape(-1, 2)
    heads = torch.as_tensor(heads, dtype=torch.long).reshape(-1, 2)
    records: list = []
    layers = sorted(set(heads[:, 0].tolist()))
    scores = last_position_logits(model, icl.batch, {"clean": _recording(model, layers, records)},
                                  token_ids=icl.class_token_ids, log_softmax=True, chunk_size=chunk_size)
    return _gather_label_attention(records, heads, icl.label_positions), scores["clean"]


@dataclass
class ICLBias(JsonResult):
    """Bias before and after the mitigation on the in-context heads and on random heads (module docstring).

    ``before`` / ``mitigated`` / ``random[i]``: ``{"probability", "rate", "accuracy"}``; ``reduction`` /
    ``random_reduction[i]``: relative reduction of the probability bias; ``attention``: in the in-context heads
    (summed over heads, mean over prompts), mass on the favoured class's label positions vs the others' (total and
    per demonstration) and per slot, before and after the mitigation.
    """

    format: ClassVar[str] = "neuronscope.icl_bias"

    kind: str
    label_words: list[str]
    n_prompts: int
    heads: list[list[int]]
    before: dict[str, float]
    mitigated: dict[str, float]
    random: list[dict[str, float]]
    reduction: float
    reduction_rate: float
    random_reduction: list[float]
    attention: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        mean_random = sum(self.random_reduction) / max(1, len(self.random_reduction))
        return (f"{self.kind} bias (p(favoured) - 1/C): {self.before['probability']:+.3f} -> "
                f"{self.mitigated['probability']:+.3f} with {len(self.heads)} in-context heads re-weighted "
                f"({self.reduction:.0%} less; random heads: {mean_random:.0%} less on average)")


def _attention_summary(attention: torch.Tensor, demo_classes: torch.Tensor, favoured: torch.Tensor) -> dict:
    """Sum over heads of ``attention [B, n, k]``; mass on favoured vs other classes' label positions."""
    total = attention.sum(1)  # [B, k]
    is_favoured = (demo_classes == favoured[:, None]).float()
    fav, other = (total * is_favoured).sum(-1), (total * (1 - is_favoured)).sum(-1)
    return {"favoured_total": float(fav.mean()), "other_total": float(other.mean()),
            "favoured_per_demo": float((fav / is_favoured.sum(-1).clamp(min=1)).mean()),
            "other_per_demo": float((other / (1 - is_favoured).sum(-1).clamp(min=1)).mean()),
            "per_slot": total.mean(0).tolist()}


@torch.no_grad()
def measure_bias(model: nn.Module, icl: ICLBatch, favoured: torch.Tensor, heads: torch.Tensor, *, kind: str,
                 factors_for: Callable[[torch.Tensor], torch.Tensor], control_heads: Sequence[torch.Tensor] = (),
                 renormalise: str = "sources", chunk_size: int = 16) -> ICLBias:
    """Bias of ``icl`` towards ``favoured [B]``, explained and mitigated on ``heads [n, 2]`` and on each set of
    ``control_heads``. ``factors_for(heads) -> [B, n, k]`` gives the re-weighting factors of the label positions.

    Example:
        >>> measure_bias(model, icl, recent_classes(icl.demo_classes), heads, kind="recency",
        ...              factors_for=lambda h: recency_factors(calibration, h, len(icl)))
    """
    heads = torch.as_tensor(heads, dtype=torch.long).reshape(-1, 2)
    layers = sorted(set(heads[:, 0].tolist()))
    labels = icl.label_positions
    clean_records: list = []
    mitigated_records: list = []
    plans = reweighting_plans(heads, labels, factors_for(heads), renormalise)
    conditions = {"clean": _recording(model, layers, clean_records),
                  "mitigated": _recording(model, layers, mitigated_records, plans)}
    for i, control in enumerate(control_heads):
        control_plans = reweighting_plans(control, labels, factors_for(control), renormalise)
        conditions[f"random_{i}"] = lambda chunk, p=control_plans: edited_attention(
            model, [x.select(chunk.rows, chunk.shift) for x in p])
    scores = last_position_logits(model, icl.batch, conditions, token_ids=icl.class_token_ids, log_softmax=True,
                                  chunk_size=chunk_size)

    def summary(log_probs: torch.Tensor) -> dict[str, float]:
        accuracy = float((log_probs.argmax(-1) == icl.query_classes).float().mean())
        return {**bias_scores(log_probs, favoured), "accuracy": accuracy}

    before, mitigated = summary(scores["clean"]), summary(scores["mitigated"])
    randoms = [summary(scores[f"random_{i}"]) for i in range(len(control_heads))]
    clean_attention = _gather_label_attention(clean_records, heads, labels)
    edited = _gather_label_attention(mitigated_records, heads, labels, edited=True, plans=plans)
    return ICLBias(
        kind, list(icl.prompts[0].label_words), len(icl), heads.tolist(), before, mitigated, randoms,
        relative_reduction(before["probability"], mitigated["probability"]),
        relative_reduction(before["rate"], mitigated["rate"]),
        [relative_reduction(before["probability"], r["probability"]) for r in randoms],
        {"before": _attention_summary(clean_attention, icl.demo_classes, favoured),
         "after": _attention_summary(edited, icl.demo_classes, favoured)},
        {"renormalise": renormalise, "positions": "last query row, label positions",
         "n_random_draws": len(control_heads)})
