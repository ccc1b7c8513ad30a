"""``intervene``: suppress (x0) or amplify (x factor) a neuron set on prompts; each target's probability before
and after and the probability change ratio ``PCR = (P_after − P_before) / P_before`` (Chen, Dejl & Toni 2024).

Neurons from ``--neurons`` or a locate run (``--run``: its model, prompts, site and target rules are the
defaults). Specificity is measured by default (``--no-specificity`` skips it): each mode's intervention on the
target prompts and on background prompts (``--background``, the run's, else a built-in set; their answers: a
record's target, else the model's own next token), grouped (same template / other templates), and ``--draws``
random same-layer sets on both (:mod:`neuronscope.workflows.specificity`). With ``--out``:
``tables/intervene.csv``, ``specificity.json``, ``metrics.json`` and ``report.html``.

Example:
    >>> intervene(InterveneOptions(run=Path("runs/paris"), mode="suppress"))   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch

from neuronscope.workflows.common import (
    RunResult,
    fit_neurons,
    load,
    neurons_of,
    prompt_scorer,
    run_prompts,
    with_model_of,
)
from neuronscope.workflows.specificity import (
    background_for,
    measure_neurons,
    measured_prompts,
    write_specificity,
)
from neuronscope.workflows.specs.text import InterveneOptions


def modes_of(mode: str) -> list[str]:
    """``"both"`` -> ``["suppress", "amplify"]``; a single mode as a list."""
    return ["suppress", "amplify"] if mode == "both" else [mode]


def interventions_for(neurons: torch.Tensor, mode: str, factor: float, positions: str, site: str) -> list[Any]:
    """The interventions of a mode: ``suppress`` (x0) or ``amplify`` (x factor)."""
    from neuronscope.trace import scale_neurons

    return scale_neurons(neurons, 0.0 if mode == "suppress" else factor, positions, site=site)


def pcr_summary(before: torch.Tensor, after: torch.Tensor) -> dict[str, Any]:
    """Mean / std / min / max / n of PCR over prompts, and the mean probabilities before and after."""
    from neuronscope.measure.metrics import probability_change_ratio, summarise

    return {"pcr": summarise(probability_change_ratio(before, after)).as_dict(),
            "p_before_mean": float(before.mean()), "p_after_mean": float(after.mean())}


def intervene(options: InterveneOptions, *, loaded: Any = None) -> RunResult:
    """Run ``intervene`` (see the module docstring)."""
    from neuronscope.models.adapter import get_adapter
    from neuronscope.runs.folder import RunDir

    selected, run_config = neurons_of(options)
    options = with_model_of(options, run_config)
    records = run_prompts(options, run_config)
    site = options.site or run_config.get("site") or "neuron"
    leading_space = run_config.get("leading_space", True) if options.run else options.leading_space
    background = background_for(options, [r.prompt for r in records], run_config) if options.specificity else []
    if options.out is not None:
        RunDir.check(options.out, overwrite=options.overwrite)
    loaded = load(options, loaded)
    adapter = get_adapter(loaded.model)
    selected = fit_neurons(selected, adapter.n_layers, adapter.d_ff)
    scorer = prompt_scorer(loaded, records, leading_space=leading_space, chat=options.chat,
                           first_piece=options.first_piece, batch_size=options.batch_size)
    before = scorer.base_probabilities()
    table = [{"id": r.id, "prompt": r.prompt, "target": r.target, "token_id": int(t), "p_before": float(p)}
             for r, t, p in zip(records, scorer.targets.token_ids[:, 0].tolist(), before.tolist(), strict=True)]
    metrics: dict[str, Any] = {"neurons": int(len(selected)), "prompts": len(records), "site": site}
    measured = measured_prompts(loaded, scorer, background, chat=options.chat, batch_size=options.batch_size)
    lines, reports = [], {}
    for name in modes_of(options.mode):
        changes = interventions_for(selected, name, options.factor, options.positions, site)
        after = scorer.probabilities(None, changes)
        summary = metrics[name] = pcr_summary(before, after)
        for row, p in zip(table, after.tolist(), strict=True):
            row[f"p_{name}"] = p
            row[f"pcr_{name}"] = (p - row["p_before"]) / row["p_before"] if row["p_before"] > 0 else float("nan")
        line = (f"{name}: mean PCR {summary['pcr']['mean']:+.4f} (sd {summary['pcr']['std']:.4f}, "
                f"n {summary['pcr']['n']}); mean P {summary['p_before_mean']:.4g} -> {summary['p_after_mean']:.4g}")
        lines.append(line)
        if options.specificity:
            reports[name] = measure_neurons(loaded, measured, selected, positions=options.positions,
                                            factor=0.0 if name == "suppress" else options.factor, site=site,
                                            draws=options.draws, seed=options.seed)
    if options.out is None:
        lines += write_specificity(None, reports, metrics) if reports else []
        return RunResult("intervene", "", metrics, lines)
    lines += _write(options, table, metrics, reports)
    return RunResult("intervene", str(options.out), metrics, [*lines, f"results in {options.out}"])


def _write(options: InterveneOptions, table: list[dict[str, Any]], metrics: dict[str, Any],
           reports: dict[str, Any]) -> list[str]:
    from neuronscope.runs.folder import RunDir
    from neuronscope.workflows.common import finish_run

    results = RunDir(options.out, overwrite=options.overwrite)
    results.write_config({"command": "intervene", **options.recorded()})
    results.write_meta({"runtime": options.runtime()})
    modes = modes_of(options.mode)
    columns = ["id", "prompt", "target", "token_id", "p_before"] + [f"{k}_{m}" for m in modes for k in ("p", "pcr")]
    results.write_csv("tables/intervene.csv", table, columns)
    lines = write_specificity(results, reports, metrics) if reports else []
    finish_run(results, metrics)
    return lines
