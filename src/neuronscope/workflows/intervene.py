"""``intervene``: suppress (x0) or amplify (x factor) a neuron set on prompts; each target's probability before
and after and the probability change ratio ``PCR = (P_after − P_before) / P_before`` (Chen, Dejl & Toni 2024).

Neurons from ``--neurons`` or a locate run (``--run``: its model, prompts, site and target rules are the
defaults); mixture-of-experts models take ``layer:expert:index`` neurons (changed for the tokens routed to their
expert). On such models the experts themselves can be changed instead: ``--drop-expert L:E[,E]`` with ``--mode
zero`` (its output weight set to 0), ``reroute`` (the router's next choice takes its place, weights by the
family's rule) or ``both``, and ``--force-routing L:E,E`` (exactly ``top_k`` experts), each measured as its own
condition (``zero``, ``reroute``, ``force``) at ``--positions``.

Attention heads instead (``--heads 22.7,24.7`` or the top in-context heads of a ``recipe icl`` folder,
``--heads-from RUN --top-heads N``; see :mod:`.head_interventions`): ``suppress`` / ``amplify`` scale each head's
slice of the attention output projection's input, and ``--draws N`` adds ``random_<mode>``: N random sets of as
many heads (never the chosen ones), their per-draw mean PCR and mean / min / max.

Specificity of a neuron set is measured by default (``--no-specificity`` skips it): each mode's intervention on
the target prompts and on background prompts (``--background``, the run's, else a built-in set; their answers: a
record's target, else the model's own next token), grouped (same template / other templates), and ``--draws``
random same-layer sets on both (:mod:`neuronscope.workflows.specificity`). With ``--out``:
``tables/intervene.csv``, ``specificity.json``, ``metrics.json`` and ``report.html``.

Example:
    >>> intervene(InterveneOptions(run=Path("runs/paris"), mode="suppress"))   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch

from neuronscope.errors import InputError
from neuronscope.workflows.common import (
    RunResult,
    fit_to_model,
    load,
    neurons_of,
    prompt_scorer,
    run_prompts,
    with_model_of,
    write_png,
)
from neuronscope.workflows.head_interventions import fit_heads, read_icl_run
from neuronscope.workflows.options import parse_heads
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


def conditions_of(options: InterveneOptions, neurons: torch.Tensor | None, site: str,
                  heads: tuple[Any, torch.Tensor] | None = None) -> list[tuple[str, list]]:
    """The measured conditions ``(name, interventions)``: the neuron or head modes (``heads`` = (model, [n, 2])),
    the expert drops (``zero`` / ``reroute``), a forced routing (``force``)."""
    from neuronscope.trace import scale_heads
    from neuronscope.trace.expert_interventions import drop_expert, force_routing
    from neuronscope.workflows.head_interventions import head_factor
    from neuronscope.workflows.options import parse_expert_lists

    conditions = []
    if heads is not None:
        conditions += [(name, scale_heads(heads[0], heads[1], head_factor(name, options.factor), options.positions))
                       for name in modes_of(options.mode)]
    if neurons is not None:
        conditions += [(name, interventions_for(neurons, name, options.factor, options.positions, site))
                       for name in modes_of(options.mode)]
    drops = parse_expert_lists(options.drop_expert, "--drop-expert")
    if drops:
        modes = ["zero", "reroute"] if options.mode == "both" else [options.mode]
        conditions += [(mode, [drop_expert(layer, experts, options.positions, mode=mode) for layer, experts in drops])
                       for mode in modes]
    forced = [force_routing(layer, experts, options.positions)
              for layer, experts in parse_expert_lists(options.force_routing, "--force-routing")]
    if forced:
        conditions.append(("force", forced))
    return conditions


def intervene(options: InterveneOptions, *, loaded: Any = None) -> RunResult:
    """Run ``intervene`` (see the module docstring)."""
    from neuronscope.models.adapter import get_adapter
    from neuronscope.runs.folder import RunDir

    selected, run_config = neurons_of(options) if options.neurons or options.run else (None, {})
    recipe = read_icl_run(options.heads_from) if options.heads_from else None
    options = with_model_of(options, recipe.model if recipe else run_config)
    records = recipe.prompt_records() if recipe and not options.has_prompts else run_prompts(options, run_config)
    site = options.site or run_config.get("site") or "neuron"
    leading_space = run_config.get("leading_space", True) if options.run else options.leading_space
    first_piece = options.first_piece or (recipe is not None and not options.has_prompts)  # the ICL label token
    heads = recipe.top(options.head_ranking, options.top_heads) if recipe else None
    heads = torch.tensor(parse_heads(options.heads), dtype=torch.long) if options.heads else heads
    specific = options.specificity and selected is not None and not (options.drop_expert or options.force_routing)
    background = background_for(options, [r.prompt for r in records], run_config) if specific else []
    if options.out is not None:
        RunDir.check(options.out, overwrite=options.overwrite)
    loaded = load(options, loaded)
    adapter = get_adapter(loaded.model)
    if (options.drop_expert or options.force_routing) and adapter.moe is None:
        raise InputError("--drop-expert / --force-routing need a mixture-of-experts model; this one is dense")
    selected = fit_to_model(selected, adapter) if selected is not None else None
    specific = specific and adapter.moe is None  # expert neurons: their random sets are the PCR baseline's
    heads = fit_heads(heads, adapter.n_layers, adapter.n_heads) if heads is not None else None
    scorer = prompt_scorer(loaded, records, leading_space=leading_space, chat=options.chat,
                           first_piece=first_piece, batch_size=options.batch_size)
    before = scorer.base_probabilities()
    table = [{"id": r.id, "prompt": r.prompt, "target": r.target, "token_id": int(t), "p_before": float(p)}
             for r, t, p in zip(records, scorer.targets.token_ids[:, 0].tolist(), before.tolist(), strict=True)]
    metrics: dict[str, Any] = {"neurons": 0 if selected is None else int(len(selected)), "prompts": len(records),
                               "site": site, "drop_expert": list(options.drop_expert),
                               "force_routing": list(options.force_routing)}
    if heads is not None:
        metrics["heads"] = [f"{layer}.{head}" for layer, head in heads.tolist()]
    measured = measured_prompts(loaded, scorer, background, chat=options.chat, batch_size=options.batch_size)
    lines, reports = [], {}
    conditions = conditions_of(options, selected, site, None if heads is None else (loaded.model, heads))
    for name, changes in conditions:
        after = scorer.probabilities(None, changes)
        summary = metrics[name] = pcr_summary(before, after)
        for row, p in zip(table, after.tolist(), strict=True):
            row[f"p_{name}"] = p
            row[f"pcr_{name}"] = (p - row["p_before"]) / row["p_before"] if row["p_before"] > 0 else float("nan")
        line = (f"{name}: mean PCR {summary['pcr']['mean']:+.4f} (sd {summary['pcr']['std']:.4f}, "
                f"n {summary['pcr']['n']}); mean P {summary['p_before_mean']:.4g} -> {summary['p_after_mean']:.4g}")
        lines.append(line)
        if specific and name in ("suppress", "amplify"):
            reports[name] = measure_neurons(loaded, measured, selected, positions=options.positions,
                                            factor=0.0 if name == "suppress" else options.factor, site=site,
                                            draws=options.draws, seed=options.seed)
    if heads is not None and options.draws:
        conditions += _random_heads(options, scorer, before, loaded.model, heads, table, metrics, lines)
    if options.out is None:
        lines += write_specificity(None, reports, metrics) if reports else []
        return RunResult("intervene", "", metrics, lines)
    lines += _write(options, table, metrics, [name for name, _ in conditions], reports)
    return RunResult("intervene", str(options.out), metrics, [*lines, f"results in {options.out}"])


def _random_heads(options: InterveneOptions, scorer: Any, before: torch.Tensor, model: Any, heads: torch.Tensor,
                  table: list[dict[str, Any]], metrics: dict[str, Any], lines: list[str]) -> list[tuple[str, list]]:
    """The ``random_<mode>`` conditions: their metrics, table columns (each prompt's p averaged over the draws and
    its PCR) and terminal lines; returns ``(name, [])`` per condition, for the table's columns."""
    from neuronscope.models.adapter import get_adapter
    from neuronscope.workflows.head_interventions import measure_random, random_head_sets

    adapter = get_adapter(model)
    sets = random_head_sets(heads, adapter.n_layers, adapter.n_heads, options.draws, options.seed)
    names = []
    for mode in modes_of(options.mode):
        name = f"random_{mode}"
        summary, after = measure_random(scorer, before, model, sets, mode, options.factor, options.positions)
        metrics[name] = summary
        for row, p in zip(table, after.tolist(), strict=True):
            row[f"p_{name}"] = p
            row[f"pcr_{name}"] = (p - row["p_before"]) / row["p_before"] if row["p_before"] > 0 else float("nan")
        lines.append(f"{name}: mean PCR {summary['pcr_mean']:+.4f} over {summary['draws']} random sets of "
                     f"{len(heads)} heads (draws {summary['pcr_min']:+.4f} … {summary['pcr_max']:+.4f})")
        names.append((name, []))
    return names


def _write(options: InterveneOptions, table: list[dict[str, Any]], metrics: dict[str, Any], modes: list[str],
           reports: dict[str, Any]) -> list[str]:
    from neuronscope.report import build_report
    from neuronscope.runs.folder import RunDir

    results = RunDir(options.out, overwrite=options.overwrite)
    results.write_config({"command": "intervene", **options.recorded()})
    results.write_meta({"runtime": options.runtime()})
    columns = ["id", "prompt", "target", "token_id", "p_before"] + [f"{k}_{m}" for m in modes for k in ("p", "pcr")]
    results.write_csv("tables/intervene.csv", table, columns)
    lines = write_specificity(results, reports, metrics) if reports else []
    results.write_json("metrics.json", metrics)
    from neuronscope.report.plots import bar_chart_figure

    write_png(results, "plots/pcr.png", bar_chart_figure(
        modes, [mean_pcr(metrics[mode]) for mode in modes], title=f"Mean PCR over {metrics['prompts']} prompts",
        xlabel="condition", ylabel="mean PCR (random_*: mean over the draws)"))
    build_report(results.path)
    return lines


def mean_pcr(summary: dict[str, Any]) -> float:
    """The mean PCR of a condition's metrics (``pcr.mean``, or ``pcr_mean`` over random draws)."""
    return float(summary["pcr"]["mean"] if "pcr" in summary else summary["pcr_mean"])
