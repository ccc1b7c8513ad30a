"""Probability change ratio of neuron sets against random sets of the same layer distribution: the one PCR.

``PCR = (P_after − P_before) / P_before`` of each prompt's target (Chen, Dejl & Toni 2024) when a set's neurons
are scaled by ``factor`` (0 suppresses, 2 boosts), measured through a pluggable :class:`~.probability.Scorer`
(full forwards, or the prefix-cache scorer for last-position interventions) on the prompts the set was located
on ("own") and on prompts it should not affect ("unrelated"), and the same for ``n_random`` random sets per
group: in each layer as many neurons as the group has there, drawn from the layer's other neurons (the group's
own and ``exclude`` never drawn); for the ``(layer, expert, index)`` neurons of a mixture-of-experts model, in
each (layer, expert) unit as many as the group has there (``layout``). One generator, seeded once, draws every
group's sets in order.

A group without neurons is skipped (listed in ``skipped_groups``, measured nowhere): a zero would pull the mean
towards "no effect" without anything having been tested.

Example:
    >>> groups = [NeuronGroup(key_neurons[q], own=rows_of[q], unrelated=others_of[q], name=q) for q in queries]
    >>> report = pcr_against_random(scorer, groups, factor=0.0, n_random=5)        # doctest: +SKIP
    >>> report.own["mean"], report.random_own["mean"]                              # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from neuronscope.measure.baselines import random_sets_like
from neuronscope.measure.metrics import probability_change_ratio, summarise
from neuronscope.measure.probability import Scorer
from neuronscope.results.base import JsonResult
from neuronscope.results.neuron_layout import NeuronLayout
from neuronscope.trace import PositionSpec, scale_neurons

KINDS = ("own", "unrelated", "random_own", "random_unrelated")


@dataclass
class NeuronGroup:
    """A neuron set ``[n, 2]`` (mixture-of-experts models: ``[n, 3]`` (layer, expert, index)) with the rows it was
    located on (``own``) and rows it should not affect."""

    neurons: torch.Tensor
    own: Sequence[int]
    unrelated: Sequence[int] = ()
    name: str = ""


@dataclass
class PCRReport(JsonResult):
    """PCR summaries (mean, std, min, max, n over every row of every group; random: over every draw too) and one
    row per measured group (its mean PCRs) for a table.

    Attributes:
        factor, positions, n_random, seed: how it was measured.
        baseline: how random sets were drawn: ``"layer"`` (the same count per layer), ``"unit"`` / ``"moe-layer"``
            (expert neurons: the same count per (layer, expert) / per layer).
        own, unrelated, random_own, random_unrelated: :func:`~.metrics.summarise` dicts, None where nothing
            was measured.
        per_group: ``{"name", "n_neurons", "own", "unrelated", "random_own", "random_unrelated"}`` means.
        skipped_groups: names of groups without neurons.
        values: every PCR by kind, in measurement order (in memory only: not in ``as_dict`` or the saved file).
    """

    format: ClassVar[str] = "neuronscope.pcr"

    factor: float
    positions: str = "last"
    n_random: int = 0
    seed: int = 0
    baseline: str = "layer"
    own: dict[str, Any] | None = None
    unrelated: dict[str, Any] | None = None
    random_own: dict[str, Any] | None = None
    random_unrelated: dict[str, Any] | None = None
    per_group: list[dict[str, Any]] = field(default_factory=list)
    skipped_groups: list[str] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out = super().as_dict()
        out.pop("values")
        return out

    def summary(self) -> str:
        def mean(kind: str) -> str:
            entry = getattr(self, kind)
            return f"{entry['mean']:+.4f}" if entry else "n/a"

        lines = [f"x{self.factor:g}: own {mean('own')}, unrelated {mean('unrelated')}; random own "
                 f"{mean('random_own')}, random unrelated {mean('random_unrelated')} ({self.n_random} draws/group)"]
        if self.skipped_groups:
            lines.append(f"  {len(self.skipped_groups)} groups without neurons skipped")
        return "\n".join(lines)


def pcr_against_random(
    scorer: Scorer,
    groups: Sequence[NeuronGroup],
    *,
    factor: float,
    d_ff: int | None = None,
    n_layers: int | None = None,
    positions: PositionSpec = "last",
    site: str = "neuron",
    n_random: int = 5,
    seed: int = 0,
    exclude: torch.Tensor | None = None,
    layout: NeuronLayout | None = None,
    match: str = "unit",
) -> PCRReport:
    """PCR of each group's neurons (scaled by ``factor``) on its own and unrelated rows, vs random same-layer sets
    (expert neurons: random sets of the same (layer, expert) units, see
    :func:`~neuronscope.measure.baselines.random_sets_like`).

    Args:
        scorer: the prompts, their targets and how a probability is measured.
        groups: neuron sets with their rows.
        factor: the scale (0 suppresses, 2 boosts).
        d_ff, n_layers: the neuron grid of a dense model (random sets are drawn from it).
        layout, match: mixture-of-experts models (``[n, 3]`` groups): the model's neuron layout
            (``get_adapter(model).moe.layout``) and ``"unit"`` (default) or ``"layer"``.
        positions: where the neurons are scaled (the prefix-cache scorer acts at the last position only).
        site: the neuron site.
        n_random: random sets per group.
        seed: seed of the one generator that draws every group's random sets, in order.
        exclude: neurons never drawn as random (e.g. every group's located neurons), beside the group's own.
    """
    base = scorer.base_probabilities()
    generator = torch.Generator().manual_seed(seed)
    width = 3 if layout is not None else 2
    report = PCRReport(factor=float(factor), positions=str(positions), n_random=n_random, seed=seed,
                       baseline=("moe-layer" if match == "layer" else "unit") if width == 3 else "layer")
    values: dict[str, list[float]] = {kind: [] for kind in KINDS}

    def measure(neurons: torch.Tensor, rows: list[int]) -> list[float]:
        if not rows:
            return []
        after = scorer.probabilities(rows, scale_neurons(neurons, factor, positions, site=site))
        return probability_change_ratio(base[rows], after).tolist()

    for group in groups:
        neurons = torch.as_tensor(group.neurons, dtype=torch.long).reshape(-1, width)
        own, unrelated = list(group.own), list(group.unrelated)
        if len(neurons) == 0:
            report.skipped_groups.append(group.name)
            continue
        row: dict[str, Any] = {"name": group.name, "n_neurons": len(neurons)}
        for kind, rows in (("own", own), ("unrelated", unrelated)):
            measured = measure(neurons, rows)
            values[kind] += measured
            row[kind] = sum(measured) / len(measured) if measured else None
        excluded = neurons if exclude is None else torch.cat([neurons, exclude.long().reshape(-1, width)])
        draws = random_sets_like(neurons, d_ff=d_ff, n_layers=n_layers, layout=layout, match=match,
                                 n_draws=n_random, generator=generator, exclude=excluded)
        for kind, rows in (("own", own), ("unrelated", unrelated)):
            measured = [value for draw in draws for value in measure(draw, rows)]
            values[f"random_{kind}"] += measured
            row[f"random_{kind}"] = sum(measured) / len(measured) if measured else None
        report.per_group.append(row)
    for kind in KINDS:
        setattr(report, kind, summarise(values[kind]).as_dict() if values[kind] else None)
    report.values = values
    return report
