"""Project what an in-context head writes from every position (the "project" of locate-and-project).

For head ``(l, h)`` at the last position ``t`` of an ICL prompt and each source position ``s``:

- contribution ``c_s = A_h[t, s] · v_s W_O[slice_h]`` (``v_s`` = value states of the head's key/value head);
  ``Σ_s c_s`` is the head's output (the head's slice of the output projection's input times its rows of ``W_O``);
  families with a post-attention norm write ``g_a ⊙ c_s / σ_a`` (that norm frozen at the attention output's scale);
- **logit minus** ``bs(c_s)[a] − bs(c_s)[b]``, ``bs(v) = W_U (g_f ⊙ C(v) / σ)`` with the final norm frozen at the
  final residual's scale ``σ`` at ``t``; it equals ``LPI_a(c_s) − LPI_b(c_s)`` exactly (no soft-cap): the
  log-sum-exp terms cancel;
- LPI of ``c_s`` for the predicted label (:func:`head_source_log_probability_increase`).

At a demonstration's label position these say how much that demonstration pushes each label into the answer.

Example:
    >>> result = attribute_head_positions(model, icl, heads=[(21, 4), (24, 1)])
    >>> result.mean_by_class            # [k][C]: mean logit minus at the label positions of each class
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from neuronscope.attribute.heads import attention_probe, check_weighted_values, weighted_values
from neuronscope.attribute.icl_heads import group_means, label_log_probabilities
from neuronscope.attribute.log_probability_increase import FrozenReadout, head_source_log_probability_increase
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs.batch import Batch
from neuronscope.inputs.icl import ICLBatch
from neuronscope.inputs.targets import token_targets
from neuronscope.models.adapter import get_adapter
from neuronscope.models.attention import kv_head, post_attention_norm
from neuronscope.results.base import JsonResult
from neuronscope.trace import capture


# -- pure math ---------------------------------------------------------------------------------------------------
def source_contributions(weighted: torch.Tensor, output_rows: torch.Tensor) -> torch.Tensor:
    """``c_s = (A[t, s] v_s) · W_O[slice_h]``: weighted values ``[..., T, d_head]`` times the head's rows of the
    output projection ``[d_head, d]`` → ``[..., T, d]``.

    Example:
        >>> source_contributions(torch.ones(3, 2), torch.eye(2)).sum(0)
        tensor([3., 3.])
    """
    return weighted.float() @ output_rows.float().to(weighted.device)


def logit_minus(writes: torch.Tensor, readout: FrozenReadout, columns: tuple[int, int],
                sigma: torch.Tensor) -> torch.Tensor:
    """``bs(v)[a] − bs(v)[b]`` for vectors ``writes [..., d]``, ``bs(v) = G C(v) / σ`` (``σ`` broadcastable to
    ``[..., 1]``; ``columns`` = the readout columns of ``a`` and ``b``) → ``[...]``."""
    delta = readout.delta(writes).float() / sigma.to(readout.device).float()
    return delta[..., columns[0]] - delta[..., columns[1]]


def centred_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of ``x`` and ``y`` (any equal shapes, flattened); NaN if either is constant."""
    x, y = x.float().flatten(), y.float().flatten()
    x, y = x - x.mean(), y - y.mean()
    denominator = x.norm() * y.norm()
    return float(x @ y / denominator) if float(denominator) > 0 else float("nan")


# -- plumbing ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def head_source_contributions(model: nn.Module, batch: Batch, heads: torch.Tensor | Sequence[tuple[int, int]]
                              ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Each head's contribution from every source position at the last position.

    Returns:
        ``c [B, k, T, d]`` as the residual stream receives it (through a frozen post-attention norm where the
        family has one), and what the forward captured: ``"sigma" [B, 1]`` (final residual's scale at the last
        position), ``"weights" [B, k, T]`` (the heads' attention rows).
    """
    adapter = get_adapter(model)
    head_rows = torch.as_tensor(heads, dtype=torch.long).reshape(-1, 2)
    if head_rows.numel() == 0:
        raise NeuronscopeError("no heads given: pass [n, 2] (layer, head) rows")
    layers = sorted({adapter.check_layer(int(layer)) for layer in head_rows[:, 0]})
    last = adapter.n_layers - 1
    with attention_probe(model, layers, adapter) as probe, \
            capture(model, sites=["attn", "attn_out", "resid_post"], layers=sorted(set(layers) | {last}),
                    positions="last") as acts:
        model(**batch.inputs)
    positions = torch.full((len(batch), 1), batch.seq_len - 1)
    out, rows = [], []
    for layer, head in head_rows.tolist():
        layer = adapter.check_layer(layer)
        weighted = weighted_values(probe.weights[layer], probe.values[layer], positions, torch.tensor([head]),
                                   torch.tensor([kv_head(adapter, head)]))[:, 0, 0]  # [B, T, d_head]
        site = acts.get("attn", layer)[:, 0, adapter.head_slice(head)]
        check_weighted_values(weighted[:, None, None], site[:, None, None], f"layer {layer}, head {head}")
        contribution = source_contributions(weighted, adapter.attn_output_weight(layer)[adapter.head_slice(head)])
        post = post_attention_norm(adapter, layer)
        if post is not None:
            scale = post.scale(acts.get("attn_out", layer)[:, 0])  # [B, 1]
            contribution = contribution * post.gain.to(contribution.device) / scale[:, None].to(contribution.device)
        out.append(contribution)
        rows.append(probe.weights[layer][:, head, -1].float())
    sigma = adapter.final_norm().scale(acts.get("resid_post", last)[:, 0])
    return torch.stack(out, 1), {"sigma": sigma, "weights": torch.stack(rows, 1)}


@dataclass
class HeadPositionAttribution(JsonResult):
    """Per-demonstration projection of chosen heads (``k`` heads, ``B`` prompts, ``n`` demonstrations each).

    Attributes:
        heads: ``[k][2]`` (layer, head).
        label_pair: ``(a, b)`` classes of the logit minus ``bs(·)[a] − bs(·)[b]``.
        attention: ``[B][k][n]`` attention from the last position to each demonstration's label position.
        logit_minus: ``[B][k][n]`` logit minus of the contribution from each label position.
        lpi: ``[B][k][n]`` LPI of that contribution for the predicted label's token.
        head_logit_minus: ``[B][k]`` logit minus of the whole head output.
        label_share: ``[k]`` Σ over prompts of |logit minus| at label positions / at all positions.
        mean_by_class: ``[k][C]`` mean logit minus at the label positions of each class's demonstrations.
        mass_output_correlation: ``[k]`` correlation over prompts of (attention on class-a label positions −
            on class-b ones) with the head output's logit minus.
    """

    format: ClassVar[str] = "neuronscope.icl_head_positions"

    heads: list[list[int]]
    label_words: list[str]
    label_pair: list[int]
    demo_classes: list[list[int]]
    predicted: list[int]
    attention: list[list[list[float]]]
    logit_minus: list[list[list[float]]]
    lpi: list[list[list[float]]]
    head_logit_minus: list[list[float]]
    label_share: list[float]
    mean_by_class: list[list[float]]
    mass_output_correlation: list[float]
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"per-position projection of {len(self.heads)} heads on {len(self.predicted)} prompts "
                 f"(logit minus {self.label_words[self.label_pair[0]]} - {self.label_words[self.label_pair[1]]})"]
        for head, by_class, share in zip(self.heads, self.mean_by_class, self.label_share, strict=True):
            lines.append(f"  head {head}: mean logit minus at label positions by class "
                         f"{[round(x, 3) for x in by_class]}, label-position share {share:.2f}")
        return "\n".join(lines)


@torch.no_grad()
def attribute_head_positions(model: nn.Module, icl: ICLBatch, heads: torch.Tensor | Sequence[tuple[int, int]],
                             *, label_pair: tuple[int, int] = (0, 1), chunk_size: int = 1024
                             ) -> HeadPositionAttribution:
    """Attention, logit minus and LPI of each head's contribution from every demonstration's label position.

    Example:
        >>> result = attribute_head_positions(model, icl, heads.top(3), label_pair=(0, 1))
    """
    adapter = get_adapter(model)
    a, b = label_pair
    if a == b or not (0 <= a < icl.n_classes and 0 <= b < icl.n_classes):
        raise NeuronscopeError(f"label_pair must be two different classes in [0, {icl.n_classes})")
    head_rows = torch.as_tensor(heads, dtype=torch.long).reshape(-1, 2)
    contributions, extra = head_source_contributions(model, icl.batch, head_rows)  # [B, k, T, d]
    pair = icl.class_token_ids[[a, b]]
    readout = FrozenReadout.from_adapter(adapter, pair.sort().values)
    columns = tuple(int(c) for c in readout.column(pair))
    minus = logit_minus(contributions, readout, columns, extra["sigma"][:, None, None])  # [B, k, T]
    index = icl.label_positions[:, None, :].expand(-1, head_rows.shape[0], -1)  # [B, k, n]
    at_labels, attention = minus.gather(2, index), extra["weights"].gather(2, index)
    predicted = label_log_probabilities(model, icl)["clean"].argmax(-1)
    targets = token_targets(icl.batch, icl.class_token_ids[predicted][:, None])
    lpi = head_source_log_probability_increase(model, icl.batch, targets, heads=head_rows,
                                               sources=icl.label_positions, chunk_size=chunk_size).values[:, 0]
    head_minus = minus.sum(-1)  # [B, k]
    share = at_labels.abs().sum((0, 2)) / minus.abs().sum((0, 2)).clamp_min(1e-12)
    classes = icl.demo_classes[:, None, :].expand_as(at_labels)
    by_class = torch.stack([group_means(at_labels[:, j].flatten(), classes[:, j].flatten(), icl.n_classes)[0]
                            for j in range(head_rows.shape[0])])  # [k, C]
    mass_gap = (attention * (classes == a)).sum(-1) - (attention * (classes == b)).sum(-1)  # [B, k]
    correlation = [centred_correlation(mass_gap[:, j], head_minus[:, j]) for j in range(head_rows.shape[0])]
    return HeadPositionAttribution(
        head_rows.tolist(), list(icl.prompts[0].label_words), [a, b], icl.demo_classes.tolist(), predicted.tolist(),
        attention.tolist(), at_labels.tolist(), lpi.tolist(), head_minus.tolist(), share.tolist(),
        torch.nan_to_num(by_class, nan=0.0).tolist(), correlation,
        {"final_norm": "frozen at the final residual's scale", "positions": "label token of each demonstration"})
