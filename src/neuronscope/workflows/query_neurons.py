"""``query-neurons``: the FFN neurons that make the prediction's value neurons fire (Yu & Ananiadou 2024,
"Neuron-Level Knowledge Attribution in Large Language Models").

For each prompt, the attention neurons of ``--value-layers`` are ranked by their LPI for the target; each FFN
neuron's query score is summed over the top ``--top-values`` (30, the reference) of them
(:func:`neuronscope.attribute.query_neurons.summed_query_neuron_scores`), then summed over the prompts. The
top ``--top-k`` query neurons are split into **query-value** neurons (also among the top ``--value-k`` FFN value
neurons by their own LPI, summed over the prompts) and **query-only** ones
(:func:`~neuronscope.attribute.query_neurons.split_query_neurons`). Written: ``tables/query_neurons.csv`` (rank,
neuron, score, kind, top tokens), ``tables/value_neurons.csv`` (each prompt's value neurons),
``query_neurons.json``, ``plots/query_neuron_layers.png``, ``metrics.json``, ``report.html``.

Example:
    >>> query_neurons(QueryNeuronsOptions(model="./smollm2", prompt=["The capital of France is"],
    ...                                   target=["Paris"], out=Path("runs/q")))       # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from neuronscope.workflows.common import (
    RunResult,
    finish_run,
    load,
    prompt_scorer,
    run_prompts,
    write_png,
    write_table,
)
from neuronscope.workflows.options import parse_layers
from neuronscope.workflows.specs.analyses import QueryNeuronsOptions


def query_neurons(options: QueryNeuronsOptions, *, loaded: Any = None) -> RunResult:
    """Run ``query-neurons`` (see the module docstring)."""
    from neuronscope.attribute.log_probability_increase import log_probability_increase
    from neuronscope.attribute.query_neurons import split_query_neurons, summed_query_neuron_scores
    from neuronscope.explain.top_tokens import top_tokens
    from neuronscope.models.adapter import get_adapter
    from neuronscope.report.plots import layer_histogram_figure
    from neuronscope.runs.folder import RunDir

    records = run_prompts(options, {})
    value_layers = parse_layers(options.value_layers, "--value-layers")
    RunDir.check(options.out, overwrite=options.overwrite)
    loaded = load(options, loaded)
    adapter = get_adapter(loaded.model)
    scorer = prompt_scorer(loaded, records, leading_space=options.leading_space, first_piece=options.first_piece,
                           chat=options.chat)
    found = summed_query_neuron_scores(loaded.model, scorer.batch, scorer.targets, top_values=options.top_values,
                                       value_layers=value_layers)
    query_grid = found.scores.values[:, 0].sum(0)  # [n_layers, d_ff], summed over prompts
    value_grid = log_probability_increase(loaded.model, scorer.batch, scorer.targets).values[:, 0].sum(0)
    split = split_query_neurons(query_grid, value_grid, top_k=options.top_k, value_k=options.value_k)
    value_set = {tuple(n) for n in split["query_value"].tolist()}
    tokens = top_tokens(loaded.model, split["query"], loaded.tokenizer, k=options.explain_k).tokens
    rows = [{"rank": rank + 1, "layer": layer, "index": index, "query_score": float(query_grid[layer, index]),
             "own_lpi": float(value_grid[layer, index]),
             "kind": "query-value" if (layer, index) in value_set else "query-only", "top_tokens": " ".join(words)}
            for rank, ((layer, index), words) in enumerate(zip(split["query"].tolist(), tokens, strict=True))]
    run = RunDir(options.out, overwrite=options.overwrite)
    run.write_config({"command": "query-neurons", **options.recorded()})
    run.write_meta({"runtime": options.runtime()})
    write_table(run, "tables/query_neurons.csv", rows)
    write_table(run, "tables/value_neurons.csv", [{"prompt": record.id, **value} for record, values in
                                                  zip(records, found.value_neurons, strict=True) for value in values])
    run.write_json("query_neurons.json", {**found.as_dict(), **{k: v.tolist() for k, v in split.items()}})
    write_png(run, "plots/query_neuron_layers.png", layer_histogram_figure(
        {"query-only": split["query_only"], "query-value": split["query_value"]}, adapter.n_layers,
        f"Top-{options.top_k} query neurons per layer"))
    metrics = {"title": "Query neurons", "prompts": len(records), "top_values": options.top_values,
               "top_k": options.top_k, "value_k": options.value_k, "query_only": len(split["query_only"]),
               "query_value": len(split["query_value"]), "top_neurons": rows[:10]}
    lines = [f"{len(rows)} query neurons: {metrics['query_only']} query-only, {metrics['query_value']} "
             "query-value", *[f"  {r['layer']}:{r['index']} {r['query_score']:+.4g} {r['kind']}  {r['top_tokens']}"
                              for r in rows[:5]]]
    finish_run(run, metrics, "\n".join(lines))
    return RunResult("query-neurons", str(options.out), metrics, [*lines, f"results in {options.out}"])
