"""The two towers of in-context heads, and the shallow-layer merge into label positions (Yu & Ananiadou 2024).

**Two towers.** For an in-context head ``(l, h)``, ``α_j`` = its attention from the last position to the label
position of demonstration ``j``. The hypothesis: ``α_j`` follows the similarity of the input and demonstration
``j``, computed by the query tower (``W_Q`` on the last position's features) and the key tower (``W_K`` on the
label position's features). Similarities set against ``α`` (all pre-RoPE, cosine):

- ``qk_positions``: ``cos(W_Q n(x_last), W_K n(x_label_j))``, ``x`` = the layer's input residual, ``n`` = its
  attention input norm: the towers on the features the head actually reads, without positions;
- ``qk_text``: ``cos(W_Q n̄(query text), W_K n̄(text of j))``, ``n̄`` = mean of ``n(x)`` over the text's tokens:
  the towers on the texts themselves;
- ``embedding``: cosine of the mean input embeddings of the query text and of demonstration ``j``'s text;
- ``same_label``: 1 where demonstration ``j`` has the query's (true) class.

Each correlation is a Pearson correlation of within-prompt-centred values pooled over prompts (so it compares
demonstrations of one prompt, not prompts).

**Shallow merge.** Per layer, attention (mean over heads) from each label position to its own demonstration's text
and to the texts of the earlier demonstrations (divided by their number: per demonstration, comparable with the own
text), and from the last position to the query text; plus the norm-weighted share
``Σ_h Σ_{s ∈ span} A_h[t, s] ‖v_s W_O^h‖ / Σ_h Σ_s A_h[t, s] ‖v_s W_O^h‖`` (how much of what the layer's attention
writes at ``t`` comes from that span; unlike raw attention it ignores mass parked on a sink token).

Example:
    >>> towers = two_towers(model, icl, heads=[(21, 4)])
    >>> towers.correlation["qk_text"]                # one value per head
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from neuronscope.errors import NeuronscopeError
from neuronscope.inputs.batch import to_model
from neuronscope.inputs.icl import ICLBatch
from neuronscope.models.adapter import get_adapter
from neuronscope.models.attention import attention_input_norm, kv_head
from neuronscope.models.query_key import query_key_projections
from neuronscope.results.base import JsonResult
from neuronscope.trace import capture
from neuronscope.trace.attention_edit import edited_attention

SIMILARITIES = ("qk_positions", "qk_text", "embedding", "same_label")


# -- pure math ---------------------------------------------------------------------------------------------------
def within_prompt_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of ``x`` and ``y [P, k]`` after centring each prompt's row; NaN if either is constant.

    Example:
        >>> within_prompt_correlation(torch.tensor([[1.0, 2.0], [5.0, 9.0]]), torch.tensor([[0.0, 1.0], [3.0, 4.0]]))
        1.0
    """
    x, y = x.float(), y.float()
    x, y = (x - x.mean(-1, keepdim=True)).flatten(), (y - y.mean(-1, keepdim=True)).flatten()
    denominator = x.norm() * y.norm()
    return float(x @ y / denominator) if float(denominator) > 1e-12 else float("nan")


def span_mask(spans: torch.Tensor, length: int) -> torch.Tensor:
    """``[..., 2]`` token spans ``[start, stop)`` → boolean masks ``[..., length]``."""
    positions = torch.arange(length)
    return (positions >= spans[..., :1]) & (positions < spans[..., 1:])


def span_means(hidden: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden [B, T, d]`` over each span ``spans [B, n, 2]`` → ``[B, n, d]``."""
    mask = span_mask(spans, hidden.shape[1]).float().to(hidden.device)  # [B, n, T]
    return torch.einsum("bnt,btd->bnd", mask, hidden.float()) / mask.sum(-1, keepdim=True).clamp(min=1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity over the last dimension (broadcasting)."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


# -- two towers --------------------------------------------------------------------------------------------------
@dataclass
class TwoTowers(JsonResult):
    """Attention to label positions against input–demonstration similarity, per in-context head.

    Attributes:
        attention: ``[B][k][n]`` α (last position → label position of each demonstration).
        similarity: name → ``[B][k][n]`` (``embedding`` and ``same_label`` are the same for every head).
        correlation: name → ``[k]`` within-prompt correlation of α with that similarity.
        same_label_attention / other_label_attention: ``[k]`` mean α on demonstrations of the query's class / of
            other classes.
    """

    format: ClassVar[str] = "neuronscope.icl_two_towers"

    heads: list[list[int]]
    attention: list[list[list[float]]]
    similarity: dict[str, list[list[list[float]]]]
    correlation: dict[str, list[float]]
    same_label_attention: list[float]
    other_label_attention: list[float]
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"two towers of {len(self.heads)} heads (within-prompt correlation of attention with similarity)"]
        for slot, head in enumerate(self.heads):
            values = ", ".join(f"{name} {self.correlation[name][slot]:+.2f}" for name in SIMILARITIES)
            lines.append(f"  head {head}: {values}")
        return "\n".join(lines)


def _normed(adapter: Any, layer: int, hidden: torch.Tensor) -> torch.Tensor:
    norm = attention_input_norm(adapter, layer)
    return hidden.float() if norm is None else norm.frozen(hidden, norm.scale(hidden))


@torch.no_grad()
def two_towers(model: nn.Module, icl: ICLBatch, heads: torch.Tensor | Sequence[tuple[int, int]]) -> TwoTowers:
    """α and the four similarities of :data:`SIMILARITIES` for each head (see the module docstring).

    Example:
        >>> towers = two_towers(model, icl, located.top(3))
    """
    adapter = get_adapter(model)
    head_rows = torch.as_tensor(heads, dtype=torch.long).reshape(-1, 2)
    if head_rows.numel() == 0:
        raise NeuronscopeError("no heads given: pass [n, 2] (layer, head) rows")
    layers = sorted({adapter.check_layer(int(x)) for x in head_rows[:, 0]})
    inputs = to_model(icl.batch, model).inputs
    with edited_attention(model, record_layers=layers) as record, \
            capture(model, sites=["resid_pre"], layers=layers, positions="all") as acts:
        model(**inputs)
    embeddings = model.get_input_embeddings()(inputs["input_ids"]).float().cpu()
    embedding_sim = cosine(span_means(embeddings, icl.query_spans[:, None])[:, :1], span_means(embeddings,
                                                                                               icl.text_spans))
    same = (icl.demo_classes == icl.query_classes[:, None]).float()
    last, labels = icl.batch.seq_len - 1, icl.label_positions
    rows_b = torch.arange(len(icl))[:, None]
    alphas, sims = [], {name: [] for name in SIMILARITIES}
    for layer, head in head_rows.tolist():
        layer = adapter.check_layer(layer)
        queries, keys = query_key_projections(adapter, layer)
        normed = _normed(adapter, layer, acts.get("resid_pre", layer))  # [B, T, d]
        kv = kv_head(adapter, head)
        q_last = queries(normed[:, last])[:, head].cpu()  # [B, d_head]
        k_labels = keys(normed[rows_b, labels.to(normed.device)])[:, :, kv].cpu()  # [B, n, d_head]
        q_text = queries(span_means(normed, icl.query_spans[:, None].to(normed.device)))[:, 0, head].cpu()
        k_text = keys(span_means(normed, icl.text_spans.to(normed.device)))[:, :, kv].cpu()
        sims["qk_positions"].append(cosine(q_last[:, None], k_labels))
        sims["qk_text"].append(cosine(q_text[:, None], k_text))
        sims["embedding"].append(embedding_sim)
        sims["same_label"].append(same)
        alphas.append(record.rows[layer][:, head, 0].cpu().gather(1, labels))
    alpha = torch.stack(alphas, 1)  # [B, k, n]
    stacked = {name: torch.stack(values, 1) for name, values in sims.items()}
    correlation = {name: [within_prompt_correlation(alpha[:, j], value[:, j]) for j in range(len(head_rows))]
                   for name, value in stacked.items()}
    same_mass = (alpha * same[:, None]).sum((0, 2)) / same.sum().clamp(min=1)
    other_mass = (alpha * (1 - same)[:, None]).sum((0, 2)) / (1 - same).sum().clamp(min=1)
    return TwoTowers(head_rows.tolist(), alpha.tolist(), {k: v.tolist() for k, v in stacked.items()}, correlation,
                     same_mass.tolist(), other_mass.tolist(),
                     {"n_prompts": len(icl), "shots": icl.shots, "correlation": "within-prompt centred Pearson",
                      "similarity": "cosine, pre-RoPE"})


# -- shallow merge -----------------------------------------------------------------------------------------------
@dataclass
class LabelMerge(JsonResult):
    """Per layer ``[L]`` (means over heads, demonstrations and prompts): how much each label position reads its
    own demonstration's text (vs each earlier demonstration's text, ``other_*``), and the last position the query
    text (see the module docstring)."""

    format: ClassVar[str] = "neuronscope.icl_label_merge"

    own_text_attention: list[float]
    other_text_attention: list[float]
    query_text_attention: list[float]
    own_text_share: list[float]
    other_text_share: list[float]
    query_text_share: list[float]
    meta: dict[str, Any] = field(default_factory=dict)


def _span_masses(rows: torch.Tensor, norms: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention mass (mean over heads) and norm-weighted share on ``masks [B, Q, T]`` for the rows
    ``[B, H, Q, T]`` and value-output norms ``[B, H, T]`` → ``[B, Q]`` each."""
    masks = masks.float()
    mass = torch.einsum("bhqt,bqt->bq", rows, masks) / rows.shape[1]
    weighted = rows * norms[:, :, None, :]
    share = torch.einsum("bhqt,bqt->bq", weighted, masks) / weighted.sum((1, 3)).clamp_min(1e-12)
    return mass, share


@torch.no_grad()
def label_merge(model: nn.Module, icl: ICLBatch, *, layers: Sequence[int] | None = None,
                chunk_size: int = 4) -> LabelMerge:
    """:class:`LabelMerge` over ``layers`` (default all), ``chunk_size`` prompts per forward."""
    adapter = get_adapter(model)
    layer_list = adapter.resolve_layers(None if layers is None else list(layers))
    length, shots = icl.batch.seq_len, icl.shots
    totals = torch.zeros(6, len(layer_list))
    for start in range(0, len(icl), chunk_size):
        part = icl.select(list(range(start, min(start + chunk_size, len(icl)))))
        queries = torch.cat([part.label_positions, torch.full((len(part), 1), length - 1)], 1)
        with edited_attention(model, record_layers=layer_list, queries=queries, value_output_norms=True) as rec:
            model(**to_model(part.batch, model).inputs)
        own = span_mask(part.text_spans, length)  # [B, n, T]
        before = torch.arange(shots)[None, :, None] > torch.arange(shots)[None, None, :]  # demo j' < j
        other = (own[:, None, :, :] & before[..., None]).any(2)  # [B, n, T]: texts of earlier demonstrations
        query = span_mask(part.query_spans[:, None], length)  # [B, 1, T]
        for slot, layer in enumerate(layer_list):
            rows, norms = rec.rows[layer].cpu(), rec.value_output_norms[layer].cpu()
            own_mass, own_share = _span_masses(rows[:, :, :shots], norms, own)
            other_mass, other_share = _span_masses(rows[:, :, :shots], norms, other)
            query_mass, query_share = _span_masses(rows[:, :, shots:], norms, query)
            earlier = torch.arange(1, shots, dtype=torch.float32)  # demonstration j has j earlier ones
            values = [own_mass.mean(1), (other_mass[:, 1:] / earlier).mean(1), query_mass[:, 0], own_share.mean(1),
                      (other_share[:, 1:] / earlier).mean(1), query_share[:, 0]]
            totals[:, slot] += torch.stack([v.sum() for v in values])
    means = (totals / len(icl)).tolist()
    return LabelMerge(*means, {"layers": layer_list, "n_prompts": len(icl), "shots": shots,
                               "other": "texts of the earlier demonstrations (causal attention sees no later ones), "
                                        "per earlier demonstration"})
