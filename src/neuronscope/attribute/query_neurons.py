"""Query neurons of the top value neurons, summed, and split into query-only and query-value neurons (Yu &
Ananiadou 2024, "Neuron-Level Knowledge Attribution in Large Language Models").

**Value neurons** write the prediction: here the attention neurons ``(l, h, n)`` read at a source position ``s``,
ranked by their LPI for the example's target (:func:`head_source_log_probability_increase` with
``coordinates=True``, over every head of ``value_layers`` and every source position). **Query neurons** make
them fire: an earlier FFN neuron ``j`` scores ``q_v(j) = a_j ⟨w_j, κ_v⟩ / ⟨x_s, κ_v⟩ · LPI(v)`` for value neuron
``v`` (:func:`neuronscope.attribute.comparative.query_neuron_scores`). As the reference does, a neuron's query
score is the **sum over the top ``top_values`` (30) value neurons** of the example:

    Q(j) = Σ_{v ∈ top-30} q_v(j)

(``top_values=1`` gives the score of the single best value neuron, our earlier one-at-a-time view, kept as an
option: it says which neurons feed *that* neuron, where the sum says which feed the prediction's readers.)

**Query-only vs query-value**: a query neuron may itself write the prediction. Among the top-``k`` query neurons,
those that are also among the top-``value_k`` FFN value neurons (by their own LPI at the target position, summed
over examples) are *query-value* neurons, the others *query-only* (:func:`split_query_neurons`).

Example:
    >>> found = summed_query_neuron_scores(model, batch, top_values=30, candidates=candidate_ids)
    >>> found.scores.top_k(20)                    # (layer, index) rows, Q(j)
    >>> found.value_neurons[0][:3]                # the example's best value neurons
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuronscope.aggregate.neurons import flat_to_neurons
from neuronscope.attribute.comparative import query_neuron_scores
from neuronscope.attribute.log_probability_increase import DEFAULT_CHUNK, head_source_log_probability_increase
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet, prediction_targets
from neuronscope.models.adapter import get_adapter
from neuronscope.results.scores import NeuronScores


@dataclass
class QueryNeurons:
    """Summed query scores ``[examples, 1, n_layers, d_ff]`` and, per example, the value neurons summed over
    (``layer``, ``head``, ``coordinate``, ``source``, ``lpi``; best first)."""

    scores: NeuronScores
    value_neurons: list[list[dict[str, Any]]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"value_neurons": self.value_neurons, "meta": self.scores.meta}


def top_value_neurons(lpi: torch.Tensor, heads: torch.Tensor, sources: torch.Tensor, k: int) -> list[dict[str, Any]]:
    """Pure selection: the ``k`` largest entries of one example's attention-neuron LPI ``[heads, S, d_head]``
    (ties: lower flat index first) as dicts, best first.

    Args:
        lpi: ``[n_heads_scored, S, d_head]`` LPI of each (head, source, coordinate).
        heads: ``[n_heads_scored, 2]`` the (layer, head) of each row.
        sources: ``[S]`` the source positions of the columns.
        k: how many (at most all).

    Example:
        >>> top_value_neurons(torch.tensor([[[0.1, 0.7]]]), torch.tensor([[1, 0]]), torch.tensor([4]), 1)
        [{'layer': 1, 'head': 0, 'coordinate': 1, 'source': 4, 'lpi': 0.699999988079071}]
    """
    n_heads, n_sources, head_dim = lpi.shape
    flat = lpi.reshape(-1).float()
    order = torch.sort(-flat, stable=True).indices[: min(k, flat.numel())]
    out = []
    for index in order.tolist():
        row, rest = divmod(index, n_sources * head_dim)
        column, coordinate = divmod(rest, head_dim)
        out.append({"layer": int(heads[row, 0]), "head": int(heads[row, 1]), "coordinate": int(coordinate),
                    "source": int(sources[column]), "lpi": float(flat[index])})
    return out


@torch.no_grad()
def summed_query_neuron_scores(
    model: nn.Module,
    batch: Batch,
    targets: TargetSet | None = None,
    *,
    top_values: int = 30,
    value_layers: Sequence[int] | None = None,
    candidates: Sequence[int] | torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> QueryNeurons:
    """``Q(j)`` of every FFN neuron: its query scores summed over each example's top ``top_values`` value neurons.

    Args:
        model, batch: the model and left-padded prompts.
        targets: one target per example (default: the model's own prediction at the last position).
        top_values: value neurons summed over per example (default 30, as the reference; 1 = the best one only).
        value_layers: layers whose heads' attention neurons compete as value neurons (default all).
        candidates: token ids; the value neurons' LPI is then exact over ``candidates ∪ targets`` (faster).
        chunk_size: vectors scored at once in that LPI.

    Returns:
        :class:`QueryNeurons`: ``scores`` NeuronScores ``[examples, 1, n_layers, d_ff]`` (``meta["unit"] ==
        "query_neuron"``), and the value neurons of each example.

    Example:
        >>> found = summed_query_neuron_scores(model, batch, top_values=30)
        >>> found.scores.grid(get_adapter(model).n_layers).shape
        torch.Size([30, 1536])
    """
    if top_values < 1:
        raise NeuronscopeError(f"top_values must be at least 1, got {top_values}")
    adapter = get_adapter(model)
    targets = prediction_targets(model, batch) if targets is None else targets
    if targets.n_targets != 1:
        raise NeuronscopeError(f"query neurons take one target per example, not {targets.n_targets}: score each "
                               "target column on its own")
    layers = adapter.resolve_layers(None if value_layers is None else list(value_layers))
    heads = torch.tensor([[layer, head] for layer in layers for head in range(adapter.n_heads)])
    lpi = head_source_log_probability_increase(model, batch, targets, heads=heads, coordinates=True,
                                               candidates=candidates, chunk_size=chunk_size)
    scores = torch.zeros(len(batch), 1, adapter.n_layers, adapter.d_ff)
    chosen = []
    for row in range(len(batch)):
        real = lpi.sources[row] >= batch.pad_lengths[row]  # left padding is no source
        values = top_value_neurons(lpi.values[row, 0][:, real], heads, lpi.sources[row][real], top_values)
        one = batch.select([row])
        one_target = TargetSet(targets.token_ids[row:row + 1], targets.positions[row:row + 1],
                               targets.valid[row:row + 1], [list(targets.labels[row])])
        for value in values:
            scores[row] += query_neuron_scores(model, one, one_target, layer=value["layer"], head=value["head"],
                                               coordinate=value["coordinate"], source=value["source"],
                                               value_lpi=value["lpi"]).values[0]
        chosen.append(values)
    meta = {"method": "query_neurons", "unit": "query_neuron", "summed_over": f"top {top_values} value neurons",
            "value_layers": layers, "targets": targets.describe(), "model": adapter.describe(),
            "vocabulary": "full" if candidates is None else "candidates"}
    return QueryNeurons(NeuronScores(scores, meta=meta), chosen)


def split_query_neurons(query_grid: torch.Tensor, value_grid: torch.Tensor, *, top_k: int,
                        value_k: int) -> dict[str, torch.Tensor]:
    """Pure math: the top-``top_k`` query neurons of ``query_grid [n_layers, d_ff]`` split by whether they are
    also among the top-``value_k`` value neurons of ``value_grid [n_layers, d_ff]`` (descending; ties: lower
    flat index first).

    Returns:
        ``{"query": [top_k, 2], "query_only": [n, 2], "query_value": [m, 2], "value": [value_k, 2]}``
        (``n + m = top_k``; rows keep the query ranking).

    Example:
        >>> split = split_query_neurons(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[0.0, 5.0, 0.0]]),
        ...                             top_k=2, value_k=1)
        >>> split["query_only"].tolist(), split["query_value"].tolist()
        ([[0, 0]], [[0, 1]])
    """
    if query_grid.shape != value_grid.shape:
        raise NeuronscopeError(f"query and value grids differ in shape: {tuple(query_grid.shape)} vs "
                               f"{tuple(value_grid.shape)}")
    d_ff = query_grid.shape[-1]

    def top(grid: torch.Tensor, k: int) -> torch.Tensor:
        return torch.sort(-grid.reshape(-1).double(), stable=True).indices[: min(k, grid.numel())]

    query, value = top(query_grid, top_k), top(value_grid, value_k)
    both = torch.isin(query, value)
    return {"query": flat_to_neurons(query, d_ff), "query_only": flat_to_neurons(query[~both], d_ff),
            "query_value": flat_to_neurons(query[both], d_ff), "value": flat_to_neurons(value, d_ff)}


__all__ = ["QueryNeurons", "split_query_neurons", "summed_query_neuron_scores", "top_value_neurons"]
