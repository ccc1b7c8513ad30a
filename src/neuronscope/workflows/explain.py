"""``explain``: the top tokens of neurons (their value vectors read through the unembedding, ``W_U w_i``) and the
layer distribution of the set. Neurons from ``--neurons`` or a locate run (``--run``: its model is the default);
mixture-of-experts models take ``layer:expert:index`` neurons (value vector = the column of that expert's
``down_proj``).

With ``--out``: ``explain.json``, ``neurons.csv``, ``top_tokens.json``, ``metrics.json``, ``plots/layers.png`` and
``report.html``.

Example:
    >>> explain(ExplainOptions(model="./tiny", neurons="1:17,0:3", k=5))   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from neuronscope.workflows.common import RunResult, fit_to_model, load, neurons_of, with_model_of, write_png
from neuronscope.workflows.neuron_files import neuron_key, selection_rows
from neuronscope.workflows.specs.text import ExplainOptions


def explain(options: ExplainOptions, *, loaded: Any = None) -> RunResult:
    """Run ``explain`` (see the module docstring)."""
    from neuronscope.explain import top_tokens
    from neuronscope.models.adapter import get_adapter
    from neuronscope.runs.folder import RunDir

    selected, run_config = neurons_of(options)
    options = with_model_of(options, run_config)
    config = {"command": "explain", **options.recorded()}
    if options.out is not None:
        RunDir.check(options.out, overwrite=options.overwrite)
    loaded = load(options, loaded)
    adapter = get_adapter(loaded.model)
    selected = fit_to_model(selected, adapter)
    explained = top_tokens(loaded.model, selected, loaded.processor, k=options.k, bottom=options.bottom)
    rows = explained.rows()
    lines = []
    for row in rows:
        lines.append(f"{neuron_key(row):>11} " + " ".join(repr(t) for t in row["top_tokens"]))
        if options.bottom:
            lines.append(f"{'':>11} bottom: " + " ".join(repr(t) for t in row["bottom_tokens"]))
    counts = [0] * adapter.n_layers
    for layer in selected[:, 0].tolist():
        counts[layer] += 1
    lines.append("neurons per layer: " + " ".join(f"{layer}:{count}" for layer, count in enumerate(counts) if count))
    metrics = {"neurons": len(rows), "per_layer": {str(i): c for i, c in enumerate(counts)}}
    if options.out is None:
        return RunResult("explain", "", metrics, lines)
    _write(options, config, rows, metrics, selected, adapter.n_layers, adapter.moe and adapter.moe.layout)
    return RunResult("explain", str(options.out), metrics, [*lines, f"results in {options.out}"])


def _write(options: ExplainOptions, config: dict[str, Any], rows: list[dict[str, Any]], metrics: dict[str, Any],
           selected: Any, n_layers: int, layout: Any) -> None:
    from neuronscope.report import build_report
    from neuronscope.report.plots import layer_histogram_figure
    from neuronscope.runs.folder import RunDir

    results = RunDir(options.out, overwrite=options.overwrite)
    results.write_config(config)
    results.write_meta({"runtime": options.runtime()})
    results.write_json("explain.json", {"neurons": rows})
    if selected.shape[1] == 3:  # expert neurons: layer, expert, kind, neuron (as locate's selection)
        table = [{key: value for key, value in row.items() if key != "rank"} for row in selection_rows(selected, None,
                                                                                                      layout)]
        results.write_csv("neurons.csv", table, ["layer", "expert", "kind", "neuron"])
    else:
        results.write_csv("neurons.csv", [{"layer": r["layer"], "index": r["neuron"]} for r in rows],
                          ["layer", "index"])
    results.write_json("top_tokens.json", {neuron_key(r): [[t, v] for t, v in
                                           zip(r["top_tokens"], r["top_values"], strict=True)] for r in rows})
    results.write_json("metrics.json", metrics)
    write_png(results, "plots/layers.png", layer_histogram_figure(selected[:, [0, -1]], n_layers))
    build_report(results.path)
