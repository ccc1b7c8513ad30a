"""``prune``: keep only the top-scored FFN neurons of some deep layers and measure task accuracy, vs random keep-sets.

The prompts' targets are the task's answers (``prediction``: the unpruned model's own next token, so its accuracy
is 1). The neurons are scored with ``--method`` (default LPI, as CNA) on the prompts, summed over them; for each
``--keep`` count, every other neuron of the pruned layers is zeroed (at every position by default) and the
accuracy (target = top-1 next token) and the target's mean probability are measured, then the same with
``--n-random`` random keep-sets with the same count in each layer (:func:`neuronscope.measure.pruning.
prune_experiment`, Yu & Ananiadou 2024). Written: ``pruning.json`` (every keep-set), ``tables/pruning.csv``,
``plots/pruning_accuracy.png``, ``metrics.json``, ``report.html``.

Example:
    >>> prune(PruneOptions(model="./smollm2", prompts=Path("sums.jsonl"), keep=[50, 200], out=Path("runs/p")))
    ... # doctest: +SKIP
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
from neuronscope.workflows.options import parse_key_values, parse_layers
from neuronscope.workflows.specs.analyses import PruneOptions


def pruning_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per keep count: the top-scored keep-set and the random ones' mean (from ``PruningReport.as_dict``)."""
    rows = []
    for point in report["points"]:
        random = point["random_accuracy"]
        probabilities = point["random_mean_probability"]
        rows.append({"keep": point["keep"], "percent_pruned": round(100 * (1 - point["keep"] /
                                                                          report["neurons_in_layers"]), 2),
                     "accuracy": point["accuracy"], "mean_probability": point["mean_probability"],
                     "random_accuracy_mean": sum(random) / len(random) if random else None,
                     "random_mean_probability": sum(probabilities) / len(probabilities) if probabilities else None,
                     "random_sets": len(random)})
    return rows


def prune(options: PruneOptions, *, loaded: Any = None) -> RunResult:
    """Run ``prune`` (see the module docstring)."""
    from neuronscope.measure.pruning import prune_experiment
    from neuronscope.report.plots import bar_chart_figure
    from neuronscope.runs.folder import RunDir

    records = run_prompts(options, {})
    layers, method_options = parse_layers(options.layers), parse_key_values(options.option)
    RunDir.check(options.out, overwrite=options.overwrite)
    loaded = load(options, loaded)
    scorer = prompt_scorer(loaded, records, leading_space=options.leading_space, first_piece=options.first_piece,
                           chat=options.chat, batch_size=options.batch_size)
    report = prune_experiment(loaded.model, scorer.batch, scorer.targets, keep=list(options.keep), layers=layers,
                              method=options.method, method_options=method_options, n_random=options.n_random,
                              seed=options.seed, positions=options.positions, batch_size=options.batch_size)
    run = RunDir(options.out, overwrite=options.overwrite)
    run.write_config({"command": "prune", **options.recorded()})
    run.write_meta({"runtime": options.runtime()})
    data = report.as_dict()
    run.write_json("pruning.json", data)
    rows = pruning_rows(data)
    write_table(run, "tables/pruning.csv", rows)
    labels = [f"{kind} {row['keep']}" for row in rows for kind in ("top", "random")]
    values = [value or 0.0 for row in rows for value in (row["accuracy"], row["random_accuracy_mean"])]
    write_png(run, "plots/pruning_accuracy.png", bar_chart_figure(
        ["unpruned", *labels], [data["full_accuracy"], *values], f"Accuracy, layers {data['layers']} pruned",
        ylabel="accuracy"))
    metrics = {"title": f"Pruning by {options.method}", "prompts": len(records), "layers": data["layers"],
               "neurons_in_layers": data["neurons_in_layers"], "full_accuracy": data["full_accuracy"],
               "full_mean_probability": data["full_mean_probability"], "points": rows}
    lines = [f"keep {row['keep']} ({row['percent_pruned']} % pruned): accuracy {row['accuracy']:.3f}, random "
             f"{row['random_accuracy_mean'] if row['random_accuracy_mean'] is None else round(row['random_accuracy_mean'], 3)}"
             for row in rows]
    finish_run(run, metrics, "\n".join([f"unpruned accuracy {data['full_accuracy']:.3f}", *lines]))
    return RunResult("prune", str(options.out), metrics, [*lines, f"results in {options.out}"])
