"""What ``locate``, ``intervene``, ``evaluate`` and ``edit make`` share to report specificity on every run: the
background prompts (a ``--background`` file, the run's, or the built-in set), one scorer over the target and
background prompts, the measurement (:mod:`neuronscope.measure.specificity`), and its files.

Files: ``specificity.json`` (``{mode: report}``, each a :class:`~neuronscope.measure.specificity.SpecificityReport`;
``evaluate`` writes ``evaluation_specificity.json``), and the same-named table in ``metrics.json`` (the report
renders it).

Example:
    >>> records = background_for(options, [r.prompt for r in records], run_config)   # doctest: +SKIP
    >>> prompts = measured_prompts(loaded, own_scorer, records)                     # doctest: +SKIP
    >>> report = measure_neurons(loaded, prompts, neurons, draws=5)                 # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


def background_for(options: Any, target_prompts: Sequence[str],
                   run_config: Mapping[str, Any] | None = None) -> list[Any]:
    """The background prompt records: ``options.background`` (a JSONL file; a record's ``"group"`` names its group,
    its ``"target"`` its answer, default the model's own next token), else the run's recorded ``background``, else
    the built-in set grouped against ``target_prompts`` (:func:`~neuronscope.inputs.background.default_background`).
    Read before any model is loaded, so that a bad file fails first."""
    from neuronscope.inputs.background import default_background
    from neuronscope.inputs.prompts import prompt_records

    path = getattr(options, "background", None) or (run_config or {}).get("background")
    if path:
        return prompt_records(Path(path), default_target="prediction")
    return default_background(target_prompts)


@dataclass
class MeasuredPrompts:
    """One scorer over the target prompts (rows first) and the background prompts; their rows."""

    scorer: Any
    target_rows: list[int]
    groups: dict[str, list[int]]


def measured_prompts(loaded: Any, own: Any, background: Sequence[Any], *, chat: bool = False,
                     batch_size: int = 8) -> MeasuredPrompts:
    """The target prompts' scorer ``own`` joined with a scorer of the background prompt records (a record's
    target, else the model's own next token), and each background group's rows."""
    from neuronscope.inputs.background import background_groups
    from neuronscope.measure.probability import JoinedScorer
    from neuronscope.workflows.common import prompt_scorer

    target_rows = list(range(len(own)))
    if not background:
        return MeasuredPrompts(own, target_rows, {})
    scorer = prompt_scorer(loaded, list(background), chat=chat, batch_size=batch_size)
    groups = {name: [len(own) + row for row in rows] for name, rows in background_groups(background).items()}
    return MeasuredPrompts(JoinedScorer(own, scorer), target_rows, groups)


def measure_neurons(loaded: Any, prompts: MeasuredPrompts, neurons: torch.Tensor, *, factor: float = 0.0,
                    positions: str = "last", site: str = "neuron", draws: int = 5, seed: int = 0) -> Any:
    """:func:`~neuronscope.measure.specificity.neuron_specificity` of ``neurons`` (scaled by ``factor`` at
    ``positions``) on the measured prompts."""
    from neuronscope.measure.specificity import neuron_specificity
    from neuronscope.models.adapter import get_adapter

    adapter = get_adapter(loaded.model)
    return neuron_specificity(prompts.scorer, neurons, target_rows=prompts.target_rows, groups=prompts.groups,
                              d_ff=adapter.d_ff, n_layers=adapter.n_layers, factor=factor, positions=positions,
                              site=site, n_random=draws, seed=seed)


def measure_edit(loaded: Any, prompts: MeasuredPrompts, edit: Any, *, draws: int = 5, seed: int = 0) -> Any:
    """:func:`~neuronscope.measure.specificity.edit_specificity` of ``edit`` on the measured prompts."""
    from neuronscope.measure.specificity import edit_specificity

    return edit_specificity(loaded.model, prompts.scorer, edit, target_rows=prompts.target_rows,
                            groups=prompts.groups, n_random=draws, seed=seed)


def write_specificity(run: Any, reports: Mapping[str, Any], metrics: dict[str, Any],
                      name: str = "specificity") -> list[str]:
    """``<name>.json`` in ``run`` (``{mode: report}``; None: no folder) and ``metrics[name]`` (one table row per mode
    and prompt group, which the report renders); returns the terminal lines."""
    if run is not None:
        run.write_json(f"{name}.json", {mode: report.as_dict() for mode, report in reports.items()})
    table: dict[str, dict[str, Any]] = {}
    lines = []
    for mode, report in reports.items():
        prefix = f"{mode}: " if len(reports) > 1 else ""
        table.update({f"{prefix}{row}": values for row, values in report.table().items()})
        lines += [f"{prefix}{line}" if number == 0 else line for number, line in enumerate(report.lines())]
    metrics[name] = table
    metrics[f"{name}_definition"] = next(iter(reports.values())).definition if reports else ""
    return lines
