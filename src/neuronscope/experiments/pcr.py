"""Probability change ratio under boosting (×2) or suppressing (×0) neuron sets, against random neurons.

PCR = (P_after − P_before) / P_before of each prompt's target (Chen, Dejl & Toni 2024), measured on the prompts a
neuron set was located on ("own") and on unrelated prompts, and the same for random sets with the same number of
neurons in each layer (several draws: mean and spread).

Example:
    >>> groups = [NeuronGroup(key_neurons[q], own=rows_of[q], unrelated=others_of[q]) for q in queries]
    >>> report = pcr_experiment(model, batch, targets, groups, mode="suppress", n_random=5)
    >>> report.summary()["own"]["mean"], report.summary()["random_own"]["mean"]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuronscope.errors import NeuronscopeError
from neuronscope.evaluate.baselines import random_neurons_like
from neuronscope.evaluate.metrics import probability_change_ratio, summarise
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models.adapter import get_adapter
from neuronscope.trace import PositionSpec, intervene, scale_neurons

MODES = {"suppress": 0.0, "boost": 2.0}


@dataclass
class NeuronGroup:
    """A neuron set ``[n, 2]`` with the batch rows it was located on (``own``) and rows it should not affect."""

    neurons: torch.Tensor
    own: Sequence[int]
    unrelated: Sequence[int] = ()
    name: str = ""


@torch.no_grad()
def target_probabilities(
    model: nn.Module, batch: Batch, targets: TargetSet, batch_size: int = 16
) -> torch.Tensor:
    """Softmax probability of each row's first target at its position: ``[batch]`` (float32 or float64, CPU).

    Runs under whatever interventions are active around the call.
    """
    out = []
    for start in range(0, len(batch), batch_size):
        rows = list(range(start, min(start + batch_size, len(batch))))
        sub = batch.select(rows)
        logits = model(**sub.inputs).logits
        logits = logits if logits.dtype == torch.float64 else logits.float()
        positions = targets.positions[rows, 0].to(logits.device)
        picked = logits[torch.arange(len(rows), device=logits.device), positions].log_softmax(-1)
        out.append(picked.gather(-1, targets.token_ids[rows, :1].to(logits.device)).exp()[:, 0].cpu())
    return torch.cat(out)


@dataclass
class PCRReport:
    """Per-group PCRs: ``own[g]``, ``unrelated[g]`` (lists over rows) and the same for ``random`` draws."""

    mode: str
    factor: float
    own: list[list[float]] = field(default_factory=list)
    unrelated: list[list[float]] = field(default_factory=list)
    random_own: list[list[float]] = field(default_factory=list)
    random_unrelated: list[list[float]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    @staticmethod
    def _flat(values: list[list[float]]) -> list[float]:
        return [v for group in values for v in group]

    def summary(self) -> dict[str, Any]:
        """Mean/std/min/max/n of each kind of PCR over all rows of all groups."""
        out: dict[str, Any] = {"mode": self.mode, "factor": self.factor}
        for name in ("own", "unrelated", "random_own", "random_unrelated"):
            values = self._flat(getattr(self, name))
            out[name] = summarise(values).as_dict() if values else None
        return out


def pcr_experiment(
    model: nn.Module,
    batch: Batch,
    targets: TargetSet,
    groups: Sequence[NeuronGroup],
    *,
    mode: str = "suppress",
    factor: float | None = None,
    positions: PositionSpec = "last",
    n_random: int = 5,
    seed: int = 0,
    batch_size: int = 16,
) -> PCRReport:
    """Boost or suppress each group's neurons and measure PCR on its own and unrelated rows, vs random sets.

    Args:
        model: the model.
        batch, targets: all prompts and their targets (first target of each row).
        groups: neuron sets with their own / unrelated rows.
        mode: ``"suppress"`` (×0) or ``"boost"`` (×2); ``factor`` overrides the multiplier.
        positions: where to intervene (default the last position, as the papers do).
        n_random: random sets per group, with the same number of neurons in each layer, excluding the group's.
        seed: seed of the random draws.
    """
    if mode not in MODES:
        raise NeuronscopeError(f"unknown mode '{mode}': use one of {', '.join(MODES)}")
    factor = MODES[mode] if factor is None else float(factor)
    adapter = get_adapter(model)
    before = target_probabilities(model, batch, targets, batch_size)
    report = PCRReport(mode, factor)
    generator = torch.Generator().manual_seed(seed)

    def measure(neurons: torch.Tensor, rows: list[int]) -> list[float]:
        if not rows:
            return []
        with intervene(model, scale_neurons(neurons, factor, positions)):
            after = target_probabilities(model, batch.select(rows), _select_targets(targets, rows), batch_size)
        return probability_change_ratio(before[rows], after).tolist()

    for group in groups:
        neurons = torch.as_tensor(group.neurons, dtype=torch.long).reshape(-1, 2)
        own, unrelated = list(group.own), list(group.unrelated)
        report.names.append(group.name)
        if len(neurons) == 0:
            report.own.append([0.0] * len(own))
            report.unrelated.append([0.0] * len(unrelated))
            continue
        report.own.append(measure(neurons, own))
        report.unrelated.append(measure(neurons, unrelated))
        draws = random_neurons_like(neurons, adapter.d_ff, n_draws=n_random, generator=generator, exclude_given=True,
                                    n_layers=adapter.n_layers)
        rand_own, rand_unrelated = [], []
        for draw in draws:
            rand_own.extend(measure(draw, own))
            rand_unrelated.extend(measure(draw, unrelated))
        report.random_own.append(rand_own)
        report.random_unrelated.append(rand_unrelated)
    return report


def _select_targets(targets: TargetSet, rows: list[int]) -> TargetSet:
    labels = [targets.labels[r] for r in rows] if targets.labels else []
    return TargetSet(targets.token_ids[rows], targets.positions[rows], targets.valid[rows], labels)
