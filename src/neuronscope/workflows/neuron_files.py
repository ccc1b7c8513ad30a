"""The files of a neuron selection in a results folder: ``neurons.json``, ``neurons.csv``, ``top_tokens.json``
and ``plots/layers.png`` (written by ``locate`` and ``explain``, read by ``explain --run``, ``intervene --run``,
``evaluate``, ``edit make --run`` and the report).

Example:
    >>> rows = write_selection(run, model, tokenizer, neurons, scores, n_layers=30, explain_k=10)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch

from neuronscope.workflows.common import write_png


def write_selection(run: Any, model: torch.nn.Module, processor: Any, neurons: torch.Tensor,
                    values: torch.Tensor | None, n_layers: int, explain_k: int) -> list[dict[str, Any]]:
    """Write the selection (ranked, with scores when given), its top tokens and layer plot; returns the rows."""
    from neuronscope.explain import top_tokens
    from neuronscope.report.plots import layer_histogram_figure

    explained = top_tokens(model, neurons, processor, k=explain_k) if len(neurons) else None
    scores = values.tolist() if values is not None else [None] * len(neurons)
    rows, tokens = [], {}
    for rank, ((layer, index), value) in enumerate(zip(neurons.tolist(), scores, strict=True)):
        row = {"rank": rank + 1, "layer": layer, "index": index}
        if value is not None:
            row["score"] = float(value)
        rows.append(row)
        if explained is not None:
            tokens[f"{layer}:{index}"] = [[token, round(float(v), 4)] for token, v
                                          in zip(explained.tokens[rank], explained.values[rank].tolist(), strict=True)]
    columns = ["rank", "layer", "index"] + (["score"] if values is not None else [])
    run.write_json("neurons.json", {"neurons": rows, "n_layers": n_layers})
    run.write_csv("neurons.csv", rows, columns)
    run.write_json("top_tokens.json", tokens)
    write_png(run, "plots/layers.png", layer_histogram_figure(neurons, n_layers))
    return rows


def top_neuron_lines(rows: list[dict[str, Any]], tokens: dict[str, list[list[Any]]], limit: int = 10) -> list[str]:
    """Terminal lines of the best ``limit`` neurons: ``layer:index  score  'tok' 'tok' ...``."""
    lines = []
    for row in rows[:limit]:
        key = f"{row['layer']}:{row['index']}"
        shown = " ".join(repr(token) for token, _ in tokens.get(key, [])[:5])
        score = f"{row['score']:+.4g}" if row.get("score") is not None else ""
        lines.append(f"  {key:>10}  {score}  {shown}".rstrip())
    return lines
