"""``causal-effect``: does suppressing a neuron set remove its concept from what the model writes, and only it?

Pan et al. 2024's causal effect and specificity, on a text model's greedy continuations
(:func:`neuronscope.measure.causal_text.causal_effect_against_random`): the concept's prompts (``--prompts`` /
``--prompt``) are continued with and without the set (``--neurons`` or a locate run's selection, ``--run``)
suppressed at every position; the **drop** of the fraction of continuations that mention one of ``--words`` is the
causal effect. ``--others`` prompts (each with its concept's word as ``target``, grouped by it) give the
**specificity**: the drop minus the others' mean drop. The same for ``--draws`` random sets with the set's count in
each layer. Written: ``tables/causal_effect.csv`` (one row per set), ``continuations.json``,
``plots/causal_effect.png``, ``metrics.json``, ``report.html``.

Example:
    >>> causal_effect(CausalEffectOptions(run=Path("runs/red"), prompt=["The colour of blood is"],
    ...                                   words=["red"], out=Path("runs/red-causal")))   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from neuronscope.errors import InputError
from neuronscope.workflows.common import (
    RunResult,
    finish_run,
    fit_neurons,
    load,
    neurons_of,
    with_model_of,
    write_png,
    write_table,
)
from neuronscope.workflows.specs.analyses import CausalEffectOptions


def _other_concepts(path: Any) -> dict[str, list[str]]:
    """The ``--others`` prompts grouped by their concept word (their ``target``)."""
    from neuronscope.inputs.prompts import prompt_records

    groups: dict[str, list[str]] = {}
    for record in prompt_records(path, (), (), default_target=""):
        if not record.target or record.target == "prediction":
            raise InputError(f"{path}: record {record.id!r} has no \"target\": give each other prompt its "
                             "concept's word")
        groups.setdefault(record.target, []).append(record.prompt)
    return groups


def causal_effect(options: CausalEffectOptions, *, loaded: Any = None) -> RunResult:
    """Run ``causal-effect`` (see the module docstring)."""
    from neuronscope.inputs import encode_prompts
    from neuronscope.inputs.prompts import prompt_records
    from neuronscope.measure.causal_text import causal_effect_against_random
    from neuronscope.models.adapter import get_adapter
    from neuronscope.report.plots import bar_chart_figure
    from neuronscope.runs.folder import RunDir

    selected, run_config = neurons_of(options)
    options = with_model_of(options, run_config)
    prompts = [r.prompt for r in prompt_records(options.prompts, options.prompt, ())]
    groups = _other_concepts(options.others) if options.others is not None else {}
    RunDir.check(options.out, overwrite=options.overwrite)
    loaded = load(options, loaded)
    adapter = get_adapter(loaded.model)
    selected = fit_neurons(selected, adapter.n_layers, adapter.d_ff)

    def batch(texts: list[str]) -> Any:
        return encode_prompts(loaded.processor, texts, chat=options.chat, model=loaded.model)

    rows = causal_effect_against_random(
        loaded.model, loaded.processor, (batch(prompts), options.words),
        {word: (batch(texts), [word]) for word, texts in groups.items()}, selected, n_random=options.draws,
        seed=options.seed, max_new_tokens=options.max_new_tokens)
    run = RunDir(options.out, overwrite=options.overwrite)
    run.write_config({"command": "causal-effect", **options.recorded()})
    run.write_meta({"runtime": options.runtime()})
    run.write_json("continuations.json", {"prompts": prompts, **{
        row["set"]: {"before": row["continuations_before"], "after": row["continuations_after"]} for row in rows}})
    table = [{key: value for key, value in row.items() if not key.startswith("continuations") and
              key != "other_drops"} for row in rows]
    write_table(run, "tables/causal_effect.csv", table)
    located, random = rows[0], rows[1:]

    def mean(key: str) -> float | None:
        return sum(row[key] for row in random) / len(random) if random else None

    metrics = {"title": f"Causal effect of {len(selected)} neurons on {options.words[0]!r}", "prompts": len(prompts),
               "neurons": len(selected), "rate_before": located["rate_before"], "rate_after": located["rate_after"],
               "drop": located["drop"], "specificity": located["specificity"], "random_drop_mean": mean("drop"),
               "random_specificity_mean": mean("specificity"), "other_drops": located["other_drops"],
               "draws": len(random)}
    labels = ["located"] + (["random (mean)"] if random else [])
    write_png(run, "plots/causal_effect.png", bar_chart_figure(
        [f"{name}: {kind}" for name in labels for kind in ("drop", "specificity")],
        [located["drop"], located["specificity"]] + ([mean("drop"), mean("specificity")] if random else []),
        f"Concept {options.words[0]!r}: rate drop when suppressed", ylabel="rate drop"))
    line = (f"{options.words[0]!r} in {located['rate_before']:.2f} of continuations -> {located['rate_after']:.2f} "
            f"with the {len(selected)} neurons suppressed (drop {located['drop']:+.2f}, specificity "
            f"{located['specificity']:+.2f})")
    if random:
        line += f"; {len(random)} random sets: drop {mean('drop'):+.2f}, specificity {mean('specificity'):+.2f}"
    finish_run(run, metrics, line)
    return RunResult("causal-effect", str(options.out), metrics, [line, f"results in {options.out}"])
