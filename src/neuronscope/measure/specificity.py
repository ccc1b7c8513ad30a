"""Specificity of a neuron set or an edit: how much it moves its own prompts' answers, how much it moves the answers
of background prompts (other facts of the same template, other templates), and the same for random sets.

Definitions (the same in ``locate``, ``intervene``, ``evaluate``, ``edit make`` and the specificity recipe):

- a prompt's **change** is the relative change of the probability of its answer token at the last position,
  ``(P_after − P_before) / P_before`` (softmax probability; :func:`~.metrics.probability_change_ratio`). A target
  prompt's answer is its target; a background prompt's answer is the unchanged model's own top-1 next token.
- **target**: the median (and mean) change over the target prompts (the prompts the set was located on).
- **background**, per group (``"same template"``, ``"other templates"``, or a prompts file's ``group`` field): the
  median (and mean) change over that group's prompts.
- **random**: ``n_random`` sets with as many neurons in each layer as the set has, drawn from the layer's other
  neurons (:mod:`.pcr`), or edits of such neurons with the same deltas (:func:`~.editing.random_edits`); their
  figures pool every (draw, prompt) change: median over ``n_random × prompts`` values.

Neuron sets are measured through :func:`~.pcr.pcr_against_random` (the one PCR) and any
:class:`~.probability.Scorer`; edits by applying them (and the random edits) around the scorer's forwards.

Example:
    >>> report = neuron_specificity(scorer, neurons, target_rows=[0], groups={"other templates": [1, 2, 3]},
    ...                             d_ff=1536, n_layers=30, n_random=5)               # doctest: +SKIP
    >>> report.target["median"], report.background["other templates"]["median"]     # doctest: +SKIP
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from neuronscope.measure.metrics import probability_change_ratio
from neuronscope.measure.pcr import NeuronGroup, PCRReport, pcr_against_random
from neuronscope.measure.probability import Scorer
from neuronscope.results.base import JsonResult

DEFINITION = ("change = (P_after - P_before) / P_before of each prompt's answer token at the last position (a "
              "background prompt's answer: the unchanged model's top-1 next token); target: median over the target "
              "prompts; background: median over each group's prompts; random: same-layer random sets, median over "
              "every (draw, prompt) change")


def change_summary(changes: Sequence[float]) -> dict[str, Any] | None:
    """``{"median", "mean", "n"}`` of relative changes (the median of an even count is the mean of the middle
    two); None for no values.

    Example:
        >>> change_summary([-0.9, -0.1, 0.0, -0.2])
        {'median': -0.15000000000000002, 'mean': -0.3, 'n': 4}
    """
    values = [float(value) for value in changes]
    if not values:
        return None
    return {"median": statistics.median(values), "mean": sum(values) / len(values), "n": len(values)}


@dataclass
class SpecificityReport(JsonResult):
    """A set's (or an edit's) change on its target prompts and on each background group, and random sets' changes.

    Attributes:
        intervention: what was done (``"x0 at the last position"``, ``"edit: erase"``, ...).
        n_neurons: the set's size; n_random, seed: the random baseline.
        target, random_target: :func:`change_summary` of the target prompts (None: none measured).
        background, random_background: per group, its :func:`change_summary`.
        definition: the denominators, in words.
        pcr: the underlying :class:`~.pcr.PCRReport` (neuron sets only; in memory, not in ``as_dict``).
    """

    format: ClassVar[str] = "neuronscope.specificity"

    intervention: str
    n_neurons: int
    n_random: int = 0
    seed: int = 0
    target: dict[str, Any] | None = None
    random_target: dict[str, Any] | None = None
    background: dict[str, dict[str, Any]] = field(default_factory=dict)
    random_background: dict[str, dict[str, Any]] = field(default_factory=dict)
    definition: str = DEFINITION
    pcr: Any = field(default=None, repr=False, compare=False)
    values: dict[str, list[float]] = field(default_factory=dict, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        out = super().as_dict()
        out.pop("pcr")
        out.pop("values")
        return out

    def _set(self, values: dict[str, list[float]]) -> SpecificityReport:
        """Fill the summaries from every measured change (``"target"``, ``"random target"``, ``"<group>"``,
        ``"random <group>"``)."""
        self.values = values
        self.target = change_summary(values.get("target", []))
        self.random_target = change_summary(values.get("random target", []))
        groups = [key for key in values if key not in ("target", "random target") and not key.startswith("random ")]
        self.background = {g: change_summary(values[g]) for g in groups if values[g]}
        self.random_background = {g: change_summary(values[f"random {g}"]) for g in groups
                                  if values.get(f"random {g}")}
        return self

    def table(self) -> dict[str, dict[str, Any]]:
        """``{row: {column: value}}`` (the report renders it as a table): one row for the target prompts and one per
        background group; columns prompts, median / mean change, random median / mean change."""
        rows: dict[str, dict[str, Any]] = {}
        named = [("target prompts", self.target, self.random_target)]
        named += [(f"background: {g}", s, self.random_background.get(g)) for g, s in self.background.items()]
        for name, summary, random in named:
            if summary is None:
                continue
            rows[name] = {"prompts": summary["n"], "median change": summary["median"], "mean change": summary["mean"],
                          "random median change": random["median"] if random else None,
                          "random mean change": random["mean"] if random else None}
        return rows

    def lines(self) -> list[str]:
        """Terminal lines: one per row of :meth:`table`."""
        out = [f"specificity ({self.intervention}, {self.n_neurons} neurons; median relative change of each prompt's "
               f"answer probability; random: {self.n_random} same-layer sets):"]
        for name, row in self.table().items():
            random = "" if row["random median change"] is None else f" (random {row['random median change']:+.1%})"
            out.append(f"  {name} ({row['prompts']}): {row['median change']:+.1%}{random}")
        return out

    def summary(self) -> str:
        return "\n".join(self.lines())


def _split(values: list[float], sizes: Sequence[int], repeat: int = 1) -> list[list[float]]:
    """Consecutive blocks of ``repeat × size`` values, one per size."""
    out, start = [], 0
    for size in sizes:
        out.append(values[start:start + repeat * size])
        start += repeat * size
    return out


def neuron_specificity(
    scorer: Scorer,
    neurons: torch.Tensor,
    *,
    target_rows: Sequence[int],
    groups: Mapping[str, Sequence[int]],
    d_ff: int,
    n_layers: int | None = None,
    factor: float = 0.0,
    positions: str = "last",
    site: str = "neuron",
    n_random: int = 5,
    seed: int = 0,
    exclude: torch.Tensor | None = None,
) -> SpecificityReport:
    """Specificity of scaling ``neurons`` by ``factor`` (0: zeroed) at ``positions``, measured through ``scorer``.

    Args:
        scorer: every prompt (target and background rows) with its answer.
        neurons: ``[n, 2]`` (layer, index) rows.
        target_rows: the scorer rows of the target prompts.
        groups: background group name -> its scorer rows (empty groups are left out).
        d_ff, n_layers: the neuron grid; factor, positions, site: the intervention.
        n_random, seed, exclude: the random same-layer sets (see :func:`~.pcr.pcr_against_random`).

    Returns:
        :class:`SpecificityReport` (its ``pcr`` the PCR report, target first, then one group per background group);
        an empty set changes nothing: its changes are all 0 and it has no random figures.
    """
    groups = {name: list(rows) for name, rows in groups.items() if len(rows)}
    neurons = torch.as_tensor(neurons, dtype=torch.long).reshape(-1, 2)
    where = "at every position" if positions == "all" else f"at the {positions} position"
    result = SpecificityReport(intervention=f"x{factor:g} {where}", n_neurons=len(neurons), n_random=n_random,
                               seed=seed)
    if len(neurons) == 0:  # nothing is changed: every change is 0 (no random sets of size 0)
        return result._set({"target": [0.0] * len(target_rows), **{name: [0.0] * len(rows)
                                                                  for name, rows in groups.items()}})
    pcr_groups = [NeuronGroup(neurons, own=list(target_rows), name="target")]
    pcr_groups += [NeuronGroup(neurons, own=[], unrelated=rows, name=name) for name, rows in groups.items()]
    report: PCRReport = pcr_against_random(scorer, pcr_groups, factor=factor, d_ff=d_ff, n_layers=n_layers,
                                           positions=positions, site=site, n_random=n_random, seed=seed,
                                           exclude=exclude)
    result.pcr = report
    sizes = [len(rows) for rows in groups.values()]
    values = {"target": report.values["own"], "random target": report.values["random_own"]}
    for name, own, random in zip(groups, _split(report.values["unrelated"], sizes),
                                 _split(report.values["random_unrelated"], sizes, n_random), strict=True):
        values[name], values[f"random {name}"] = own, random
    return result._set(values)


def edit_specificity(
    model: nn.Module,
    scorer: Scorer,
    edit: Any,
    *,
    target_rows: Sequence[int],
    groups: Mapping[str, Sequence[int]],
    n_random: int = 5,
    seed: int = 0,
    random_deltas: str = "same",
) -> SpecificityReport:
    """Specificity of a value-vector edit (applied to ``model`` while measuring, reverted after): the same figures
    as :func:`neuron_specificity`, with random edits of same-layer neurons (:func:`~.editing.random_edits`).

    Args:
        model: the unedited model (left unedited).
        scorer: every prompt (target and background rows) with its answer, measured on ``model``.
        edit: a :class:`~neuronscope.edit.weights.ValueVectorEdit`.
        target_rows, groups: as in :func:`neuron_specificity`.
        n_random, seed, random_deltas: the random edits.
    """
    from neuronscope.measure.editing import random_edits

    groups = {name: list(rows) for name, rows in groups.items() if len(rows)}
    base = scorer.base_probabilities()

    def changes(candidate: Any, rows: list[int]) -> list[float]:
        if not rows:
            return []
        with candidate.applied(model):
            after = scorer.probabilities(rows)
        return probability_change_ratio(base[rows], after).tolist()

    result = SpecificityReport(intervention=f"edit: {edit.method}", n_neurons=len(edit.neurons), n_random=n_random,
                               seed=seed)
    baselines = random_edits(model, edit, n_random, seed, random_deltas) if n_random > 0 else []
    values = {"target": changes(edit, list(target_rows)),
              "random target": [v for b in baselines for v in changes(b, list(target_rows))]}
    for name, rows in groups.items():
        values[name] = changes(edit, rows)
        values[f"random {name}"] = [v for b in baselines for v in changes(b, rows)]
    return result._set(values)


def pooled(reports: Sequence[SpecificityReport], *, everything: str | None = None,
           leave_out: Sequence[str] = ()) -> SpecificityReport:
    """One report from many (e.g. one per fact, each fact's set measured on it and on the other facts): every
    change of every report pooled, so the target figure is the median over the reports' target prompts and a
    group's the median over all its (report, prompt) pairs. ``everything`` names an extra group pooling every
    background group but those in ``leave_out`` (e.g. ``"all other facts"``).

    Example:
        >>> one = SpecificityReport("x0", 1)._set({"target": [-0.9], "others": [-0.1, 0.0]})
        >>> two = SpecificityReport("x0", 1)._set({"target": [-0.5], "others": [-0.3]})
        >>> pooled([one, two]).target["median"], pooled([one, two]).background["others"]["n"]
        (-0.7, 3)
    """
    first = reports[0] if reports else SpecificityReport("", 0)
    values: dict[str, list[float]] = {}
    for report in reports:
        for key, items in report.values.items():
            values.setdefault(key, []).extend(items)
    if everything:
        groups = [key for key in values if key not in ("target", "random target", *leave_out)
                  and not key.startswith("random ")]
        values[everything] = [v for g in groups for v in values[g]]
        values[f"random {everything}"] = [v for g in groups for v in values.get(f"random {g}", [])]
    n_neurons = round(sum(r.n_neurons for r in reports) / len(reports)) if reports else 0
    return SpecificityReport(first.intervention, n_neurons, first.n_random, first.seed)._set(values)
