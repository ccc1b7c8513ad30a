"""``neuronscope explain``: the top tokens of neurons (``W_U w_i``) and the layer distribution of a set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from neuronscope.cli import common
from neuronscope.cli.common import (
    ConfigOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    GgufOpt,
    ModelOpt,
    NeuronsOpt,
    OutOpt,
    OverwriteOpt,
    RunOpt,
)


def model_options_from_run(options: dict[str, Any], run_config: dict[str, Any]) -> dict[str, Any]:
    """Fill ``model`` / ``gguf_file`` / ``dtype`` from a run's config where the command line left them out."""
    merged = dict(options)
    if not merged.get("model") and run_config.get("model"):
        merged["model"] = run_config["model"]
        for key in ("gguf_file", "dtype", "device_map"):
            if run_config.get(key) is not None:
                merged[key] = run_config[key]
    return merged


def explain(
    ctx: typer.Context,
    neurons: NeuronsOpt = None,
    run: RunOpt = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Tokens per neuron.")] = 10,
    bottom: Annotated[bool, typer.Option(help="Also the k most suppressed tokens.")] = False,
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    dtype: DtypeOpt = "fp32",
    device_map: DeviceMapOpt = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Top tokens of neurons (their value vectors read through the unembedding) and where they sit.

    Neurons come from --neurons or from a locate run (--run, whose model is used unless --model is given).
    With --out, writes neurons.csv, top_tokens.json, plots/layers.png and a report.

    \b
    Example:
      neuronscope explain --model ./tiny-llama --neurons 1:17,0:3 -k 5
      neuronscope explain --run runs/paris --out runs/paris-explained
    """
    from neuronscope.explain import top_tokens
    from neuronscope.models import get_adapter
    from neuronscope.report import build_report
    from neuronscope.report.plots import layer_histogram_figure
    from neuronscope.runs import RunDir

    options = common.settings(ctx, config)
    selected, run_config = common.neurons_from(options)
    options = model_options_from_run(options, run_config)
    common.require(options, "model")
    loaded = common.load(options)
    adapter = get_adapter(loaded.model)
    common.check_neurons_fit(selected, adapter.n_layers, adapter.d_ff)
    selected = selected.clone()
    selected[:, 0] %= adapter.n_layers
    explained = top_tokens(loaded.model, selected, loaded.processor, k=options["k"], bottom=options["bottom"])
    rows = explained.rows()
    for row in rows:
        typer.echo(f"{row['layer']:>4}:{row['neuron']:<6} " + " ".join(repr(t) for t in row["top_tokens"]))
        if options["bottom"]:
            typer.echo(f"{'':>11} bottom: " + " ".join(repr(t) for t in row["bottom_tokens"]))
    counts = [0] * adapter.n_layers
    for layer in selected[:, 0].tolist():
        counts[layer] += 1
    typer.echo("neurons per layer: " + " ".join(f"{layer}:{count}" for layer, count in enumerate(counts) if count))
    if not options.get("out"):
        return
    results = RunDir(options["out"], overwrite=options["overwrite"])
    results.write_config(common.recorded_config(options, "explain"))
    results.write_meta({"runtime": common.runtime_record(options)})
    results.write_json("explain.json", {"neurons": rows})
    results.write_csv("neurons.csv", [{"layer": r["layer"], "index": r["neuron"]} for r in rows], ["layer", "index"])
    results.write_json("top_tokens.json", {f"{r['layer']}:{r['neuron']}": [[t, v] for t, v in
                                           zip(r["top_tokens"], r["top_values"], strict=True)] for r in rows})
    results.write_json("metrics.json", {"neurons": len(rows), "per_layer": {str(i): c for i, c in enumerate(counts)}})
    figure = layer_histogram_figure(selected, adapter.n_layers)
    results.write_png("plots/layers.png", figure)
    import matplotlib.pyplot as plt

    plt.close(figure)
    build_report(results.path)
    typer.echo(f"results in {Path(results.path)}")
