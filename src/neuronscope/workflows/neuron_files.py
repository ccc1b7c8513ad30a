"""The files of a neuron selection in a results folder: ``neurons.json``, ``neurons.csv``, ``top_tokens.json``
and ``plots/layers.png`` (MoE models also ``tables/unit_scores.csv`` and ``plots/experts.png``; written by ``locate`` and ``explain``, read by ``explain --run``, ``intervene --run``,
``evaluate``, ``edit make --run`` and the report).

Dense models: rows ``rank, layer, index, score`` and keys ``"layer:index"``. Mixture-of-experts models: rows
``rank, layer, expert, kind, neuron, score`` (kind: routed, shared or dense, as
:meth:`~neuronscope.results.expert_scores.ExpertNeuronScores.top_table`) and keys ``"layer:expert:index"``.

Example:
    >>> rows = write_selection(run, model, tokenizer, neurons, scores, n_layers=30, explain_k=10)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch

from neuronscope.workflows.common import write_png

DENSE_COLUMNS = ("rank", "layer", "index")
EXPERT_COLUMNS = ("rank", "layer", "expert", "kind", "neuron")


def neuron_key(row: dict[str, Any] | list[int] | tuple[int, ...]) -> str:
    """``"layer:index"`` of a dense neuron, ``"layer:expert:index"`` of an expert neuron (a row dict or a tuple).

    Example:
        >>> neuron_key({"layer": 1, "expert": 5, "kind": "routed", "neuron": 26}), neuron_key((3, 17))
        ('1:5:26', '3:17')
    """
    if isinstance(row, dict):
        parts = [row["layer"], *([row["expert"]] if "expert" in row else []), row.get("index", row.get("neuron"))]
        return ":".join(str(part) for part in parts)
    return ":".join(str(int(part)) for part in row)


def expert_kind(layout: Any, layer: int, expert: int) -> str:
    """``"dense"`` (expert -1), ``"shared"`` or ``"routed"``."""
    return "dense" if expert == -1 else ("shared" if layout.is_shared(layer, expert) else "routed")


def selection_rows(neurons: torch.Tensor, values: torch.Tensor | None, layout: Any = None) -> list[dict[str, Any]]:
    """Ranked rows of a selection (``layout``: the MoE model's neuron layout, for ``[n, 3]`` rows)."""
    scores = values.tolist() if values is not None else [None] * len(neurons)
    rows = []
    for rank, (neuron, value) in enumerate(zip(neurons.tolist(), scores, strict=True)):
        if len(neuron) == 3:
            row = {"rank": rank + 1, "layer": neuron[0], "expert": neuron[1],
                   "kind": expert_kind(layout, neuron[0], neuron[1]), "neuron": neuron[2]}
        else:
            row = {"rank": rank + 1, "layer": neuron[0], "index": neuron[1]}
        if value is not None:
            row["score"] = float(value)
        rows.append(row)
    return rows


def write_selection(run: Any, model: torch.nn.Module, processor: Any, neurons: torch.Tensor,
                    values: torch.Tensor | None, n_layers: int, explain_k: int) -> list[dict[str, Any]]:
    """Write the selection (ranked, with scores when given), its top tokens and layer plot; returns the rows."""
    from neuronscope.explain import top_tokens
    from neuronscope.models.adapter import get_adapter
    from neuronscope.report.plots import layer_histogram_figure

    experts = neurons.dim() == 2 and neurons.shape[1] == 3
    layout = get_adapter(model).moe.layout if experts else None
    explained = top_tokens(model, neurons, processor, k=explain_k) if len(neurons) else None
    rows, tokens = selection_rows(neurons, values, layout), {}
    if explained is not None:
        for rank, row in enumerate(rows):
            tokens[neuron_key(row)] = [[token, round(float(v), 4)] for token, v
                                       in zip(explained.tokens[rank], explained.values[rank].tolist(), strict=True)]
    columns = list(EXPERT_COLUMNS if experts else DENSE_COLUMNS) + (["score"] if values is not None else [])
    run.write_json("neurons.json", {"neurons": rows, "n_layers": n_layers})
    run.write_csv("neurons.csv", rows, columns)
    run.write_json("top_tokens.json", tokens)
    write_png(run, "plots/layers.png", layer_histogram_figure(neurons[:, [0, -1]], n_layers))
    return rows


def top_neuron_lines(rows: list[dict[str, Any]], tokens: dict[str, list[list[Any]]], limit: int = 10) -> list[str]:
    """Terminal lines of the best ``limit`` neurons: ``layer:index  score  'tok' 'tok' ...`` (expert neurons:
    ``layer:expert:index``)."""
    lines = []
    for row in rows[:limit]:
        key = neuron_key(row)
        shown = " ".join(repr(token) for token, _ in tokens.get(key, [])[:5])
        score = f"{row['score']:+.4g}" if row.get("score") is not None else ""
        lines.append(f"  {key:>10}  {score}  {shown}".rstrip())
    return lines


def write_unit_table(run: Any, scores: Any) -> list[dict[str, Any]]:
    """``tables/unit_scores.csv`` of :class:`~neuronscope.results.expert_scores.ExpertNeuronScores`: each unit
    (routed expert, shared expert, dense layer) with its mean total score over examples and targets (its neurons
    plus its bias term), the share of the examples it scores non-zero in, and its rank; best first."""
    units = scores.layout.units.tolist()
    per_example = scores.unit_scores().double()  # [examples, targets, units]
    mean = per_example.mean(dim=(0, 1))
    active = (per_example != 0).double().mean(dim=(0, 1))
    order = torch.sort(mean, descending=True, stable=True).indices.tolist()
    rows = [{"rank": rank + 1, "layer": units[u][0], "expert": units[u][1],
             "kind": expert_kind(scores.layout, units[u][0], units[u][1]), "width": units[u][2],
             "mean_score": float(mean[u]), "active_share": float(active[u])} for rank, u in enumerate(order)]
    run.write_csv("tables/unit_scores.csv", rows, list(rows[0]) if rows else ["rank"])
    grid, layers, experts = expert_grid(rows)
    if grid.numel():
        from neuronscope.report.plots import heatmap_figure

        write_png(run, "plots/experts.png", heatmap_figure(
            grid, layers, experts, title="Mean total score of each expert (its neurons + its bias term)",
            xlabel="expert (shared experts after the routed ones)", ylabel="layer", colour_label="mean score"))
    return rows


def expert_grid(rows: list[dict[str, Any]]) -> tuple[torch.Tensor, list[int], list[int]]:
    """The unit table's ``mean_score`` of each (layer, expert) as a ``[layers, experts]`` grid (NaN where a layer
    has no such expert; dense layers left out), with its layers and expert ids: the report's ``plots/experts.png``.

    Example:
        >>> expert_grid([{"layer": 1, "expert": 0, "mean_score": 0.5}, {"layer": 0, "expert": -1, "mean_score": 1.0}])
        (tensor([[0.5000]], dtype=torch.float64), [1], [0])
    """
    cells = [row for row in rows if row["expert"] >= 0]
    layers, experts = sorted({row["layer"] for row in cells}), sorted({row["expert"] for row in cells})
    grid = torch.full((len(layers), len(experts)), float("nan"), dtype=torch.float64)
    for row in cells:
        grid[layers.index(row["layer"]), experts.index(row["expert"])] = row["mean_score"]
    return grid, layers, experts
