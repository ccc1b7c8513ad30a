"""``evaluate RUN_DIR``: does the located set matter more than random neurons?

PCR of the run's targets when its selected neurons are suppressed (x0) and amplified (x factor), against
``--draws`` random sets with the same number of neurons in each layer (drawn from the other neurons of those
layers, seeded; the ``(layer, expert, index)`` neurons of a mixture-of-experts model: the same number in each
(layer, expert), so the random neurons sit in the same experts), through
:func:`~neuronscope.measure.pcr.pcr_against_random`. The same sets are measured on background prompts
(``--background``, else the run's, else the built-in set; their answers: a record's target, else the model's own
next token), by group (same template / other templates): the located set should move its own targets, not theirs
(:mod:`neuronscope.workflows.specificity`; dense neurons). Written into the run folder: ``evaluation.json``
(and under "evaluation" in its ``metrics.json``), ``evaluation_specificity.json`` and that table in
``metrics.json``, ``tables/evaluation.csv``, ``plots/evaluation_pcr.png``, ``evaluate_config.json``; the report is
rebuilt. The locate results themselves are not touched.

Example:
    >>> evaluate(EvaluateOptions(run_dir=Path("runs/paris"), draws=20))   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from neuronscope.errors import InputError
from neuronscope.workflows.common import (
    RunResult,
    fit_to_model,
    load,
    prompt_scorer,
    read_run_neurons,
    run_prompts,
    with_model_of,
    write_png,
)
from neuronscope.workflows.intervene import modes_of
from neuronscope.workflows.specificity import (
    background_for,
    measure_neurons,
    measured_prompts,
    write_specificity,
)
from neuronscope.workflows.specs.text import EvaluateOptions


def evaluate(options: EvaluateOptions, *, loaded: Any = None) -> RunResult:
    """Run ``evaluate`` (see the module docstring)."""
    from neuronscope.models.adapter import get_adapter

    selected, run_config = read_run_neurons(options.run_dir)
    if len(selected) == 0:
        raise InputError(f"{options.run_dir} selected no neurons; rerun locate with a lower --threshold or a --top-k")
    options = with_model_of(options, run_config)
    records = run_prompts(options, run_config)
    background = background_for(options, [r.prompt for r in records], run_config)
    loaded = load(options, loaded)
    adapter = get_adapter(loaded.model)
    selected = fit_to_model(selected, adapter)
    site = run_config.get("site") or "neuron"
    layout = adapter.moe.layout if selected.shape[1] == 3 else None  # expert neurons: same (layer, expert) units
    own = prompt_scorer(loaded, records, leading_space=run_config.get("leading_space", True),
                        first_piece=bool(run_config.get("first_piece", False)), chat=bool(run_config.get("chat")),
                        batch_size=options.batch_size)
    prompts = measured_prompts(loaded, own, background, chat=bool(run_config.get("chat")),
                               batch_size=options.batch_size)
    evaluation: dict[str, Any] = {"neurons": int(len(selected)), "prompts": len(records), "draws": options.draws,
                                  "seed": options.seed, "site": site, "background_prompts": len(background)}
    table, labels, values, lines, reports = [], [], [], [], {}
    for name in modes_of(options.mode):
        factor = 0.0 if name == "suppress" else options.factor
        if layout is None:
            reports[name] = measure_neurons(loaded, prompts, selected, factor=factor, positions=options.positions,
                                            site=site, draws=options.draws, seed=options.seed)
            report = reports[name].pcr
        else:  # expert neurons: random neurons of the same (layer, expert) units, on the run's prompts
            from neuronscope.measure.pcr import NeuronGroup, pcr_against_random

            group = NeuronGroup(selected, own=list(range(len(records))), name="located")
            report = pcr_against_random(own, [group], factor=factor, d_ff=adapter.d_ff, n_layers=adapter.n_layers,
                                        positions=options.positions, site=site, n_random=options.draws,
                                        seed=options.seed, layout=layout)
            evaluation["baseline"] = report.baseline
        entry, rows = _mode_entry(report, len(records), options.draws)
        evaluation[name] = entry
        table += [{"mode": name, **row} for row in rows]
        randoms = [row["mean_pcr"] for row in rows[1:]]
        labels += [f"{name}: located"] + ([f"{name}: random (mean)"] if randoms else [])
        values += [entry["located_mean_pcr"]] + ([sum(randoms) / len(randoms)] if randoms else [])
        lines.append(_line(name, entry))
    lines += _write(options, evaluation, table, labels, values, reports)
    return RunResult("evaluate", str(options.run_dir), evaluation, [*lines, f"evaluation written into "
                                                                           f"{options.run_dir}"])


def _mode_entry(report: Any, n_prompts: int, draws: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The located mean PCR, the summary over random draws (each draw's mean over the prompts), table rows."""
    from neuronscope.measure.metrics import summarise

    own = report.values["own"]
    located = sum(own) / len(own)
    random_values = report.values["random_own"]
    per_draw = [sum(random_values[d * n_prompts:(d + 1) * n_prompts]) / n_prompts for d in range(draws)]
    entry: dict[str, Any] = {"located_mean_pcr": located,
                             "random_mean_pcr": summarise(per_draw).as_dict() if per_draw else None}
    if report.unrelated is not None:
        entry["background_mean_pcr"] = report.unrelated["mean"]
        entry["random_background_mean_pcr"] = report.random_unrelated["mean"] if report.random_unrelated else None
    rows = [{"set": "located", "mean_pcr": located}]
    rows += [{"set": f"random {i}", "mean_pcr": value} for i, value in enumerate(per_draw)]
    return entry, rows


def _line(name: str, entry: dict[str, Any]) -> str:
    random = entry["random_mean_pcr"]
    text = f"{name}: located mean PCR {entry['located_mean_pcr']:+.4f}"
    if random:
        text += f"; random {random['mean']:+.4f} (sd {random['std']:.4f}, {random['n']} draws)"
    if "background_mean_pcr" in entry:
        text += f"; on background prompts: located {entry['background_mean_pcr']:+.4f}"
        if entry.get("random_background_mean_pcr") is not None:
            text += f", random {entry['random_background_mean_pcr']:+.4f}"
    return text


def _write(options: EvaluateOptions, evaluation: dict[str, Any], table: list[dict[str, Any]], labels: list[str],
           values: list[float], reports: dict[str, Any]) -> list[str]:
    from neuronscope.report import build_report
    from neuronscope.report.plots import bar_chart_figure
    from neuronscope.runs.folder import RunDir

    run = RunDir.open(options.run_dir)
    run.write_json("evaluate_config.json", {"command": "evaluate", **options.recorded()})
    run.write_json("evaluation.json", evaluation)
    metrics = run.read_json("metrics.json") if run.exists("metrics.json") else {}
    metrics["evaluation"] = evaluation
    lines = write_specificity(run, reports, metrics, "evaluation_specificity")
    run.write_json("metrics.json", metrics)
    run.write_csv("tables/evaluation.csv", table, ["mode", "set", "mean_pcr"])
    write_png(run, "plots/evaluation_pcr.png", bar_chart_figure(labels, values, title="Mean PCR: located vs random "
                                                                "neurons", ylabel="mean PCR"))
    build_report(run.path)
    return lines
