"""``neuronscope evaluate RUN_DIR``: does the located set matter more than random neurons?

PCR (probability change ratio) of the run's targets when its selected neurons are suppressed (×0) and amplified
(×factor), against ``--draws`` random sets with the same number of neurons in each layer (drawn from the other
neurons of those layers, seeded). Written into the run folder: ``evaluation.json`` (and its ``metrics.json``
under "evaluation"), ``tables/evaluation.csv``, ``plots/evaluation_pcr.png``, ``evaluate_config.json``; the report
is rebuilt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from neuronscope.cli import common
from neuronscope.cli.common import (
    BatchSizeOpt,
    ConfigOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    GgufOpt,
    ModelOpt,
)
from neuronscope.cli.explain import model_options_from_run
from neuronscope.cli.intervene import interventions_for, modes_of, probabilities
from neuronscope.cli.prompts import read_items, resolve_targets


def evaluate(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A locate run folder.")],
    draws: Annotated[int, typer.Option(min=0, help="Random neuron sets to compare with.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the random sets.")] = 0,
    mode: Annotated[str, typer.Option(help="suppress, amplify or both.")] = "both",
    factor: Annotated[float, typer.Option(help="Amplification factor.")] = 2.0,
    positions: Annotated[str, typer.Option(help="Positions changed: last or all.")] = "last",
    prompts: Annotated[Path | None, typer.Option(
        "--prompts", help="Evaluate on these JSONL prompts instead of the run's (e.g. held-out ones).")] = None,
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    dtype: DtypeOpt = "fp32",
    device_map: DeviceMapOpt = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    batch_size: BatchSizeOpt = 8,
) -> None:
    """PCR of a run's neurons vs random neurons of the same layer distribution; results go into the run folder.

    \b
    Example:
      neuronscope evaluate runs/paris --draws 20
    """
    from neuronscope.evaluate import probability_change_ratio, random_neurons_like, summarise
    from neuronscope.models import get_adapter
    from neuronscope.report import build_report
    from neuronscope.report.plots import bar_chart_figure
    from neuronscope.runs import RunDir

    options = common.settings(ctx, config)
    selected, run_config = common.read_run_neurons(Path(options["run_dir"]))
    options = model_options_from_run(options, run_config)
    common.require(options, "model")
    if options["positions"] not in ("last", "all"):
        raise common.InputError(f"--positions {options['positions']!r}: use last or all")
    chosen_modes = modes_of(options["mode"])
    items = read_items({"prompts": options.get("prompts")} if options.get("prompts") else {}, fallback=run_config)
    if len(selected) == 0:
        raise common.InputError(f"{options['run_dir']} selected no neurons; rerun locate with a lower --threshold")
    site = run_config.get("site") or "neuron"
    loaded = common.load(options)
    adapter = get_adapter(loaded.model)
    common.check_neurons_fit(selected, adapter.n_layers, adapter.d_ff)
    selected = selected.clone()
    selected[:, 0] %= adapter.n_layers
    token_ids = resolve_targets(loaded.processor, items, adapter.vocab_size, run_config.get("leading_space", True))
    run = RunDir.open(options["run_dir"])
    chat, batch = bool(run_config.get("chat", False)), options["batch_size"]
    before, fixed = probabilities(loaded, items, token_ids, chat=chat, batch_size=batch)
    random_sets = random_neurons_like(selected, adapter.d_ff, n_draws=options["draws"], seed=options["seed"],
                                      exclude_given=True, n_layers=adapter.n_layers)
    evaluation: dict[str, Any] = {"neurons": int(len(selected)), "prompts": len(items), "draws": options["draws"],
                                  "seed": options["seed"], "site": site}
    table = []

    def mean_pcr(neurons: torch.Tensor, name: str) -> float:
        changes = interventions_for(neurons, name, options["factor"], options["positions"], site)
        after, _ = probabilities(loaded, items, token_ids, changes, chat=chat, batch_size=batch, fixed_targets=fixed)
        return float(probability_change_ratio(before, after).mean())

    labels, values = [], []
    for name in chosen_modes:
        located = mean_pcr(selected, name)
        randoms = [mean_pcr(random_set, name) for random_set in random_sets]
        evaluation[name] = {"located_mean_pcr": located,
                            "random_mean_pcr": summarise(randoms).as_dict() if randoms else None}
        table.append({"mode": name, "set": "located", "mean_pcr": located})
        table.extend({"mode": name, "set": f"random {i}", "mean_pcr": value} for i, value in enumerate(randoms))
        labels += [f"{name}: located"] + ([f"{name}: random (mean)"] if randoms else [])
        values += [located] + ([sum(randoms) / len(randoms)] if randoms else [])
        random_text = (f"; random {evaluation[name]['random_mean_pcr']['mean']:+.4f} "
                       f"(sd {evaluation[name]['random_mean_pcr']['std']:.4f}, {len(randoms)} draws)"
                       if randoms else "")
        typer.echo(f"{name}: located mean PCR {located:+.4f}{random_text}")
    run.write_json("evaluate_config.json", common.recorded_config(options, "evaluate"))
    run.write_json("evaluation.json", evaluation)
    metrics = run.read_json("metrics.json") if run.exists("metrics.json") else {}
    metrics["evaluation"] = evaluation
    run.write_json("metrics.json", metrics)
    run.write_csv("tables/evaluation.csv", table, ["mode", "set", "mean_pcr"])
    figure = bar_chart_figure(labels, values, title="Mean PCR: located vs random neurons", ylabel="mean PCR")
    run.write_png("plots/evaluation_pcr.png", figure)
    import matplotlib.pyplot as plt

    plt.close(figure)
    build_report(run.path)
    typer.echo(f"evaluation written into {run.path}")
