"""Pruning by neuron scores (CNA, Yu & Ananiadou 2024): keep only the top-scored FFN neurons of some deep layers.

In the chosen layers every neuron except the kept ones is zeroed (an intervention at every position, which is the
same as zeroing their value vectors), and the task accuracy (the target is the top-1 next token) and the target's
mean probability are compared with the unpruned model and with keeping as many random neurons in each layer
(several draws). Top-scored neurons that carry the task keep the accuracy; random ones of the same count do not.

Example:
    >>> report = prune_experiment(model, batch, targets, keep=[50, 200], layers=[26, 27, 28, 29], n_random=3)
    >>> report.as_dict()["points"][0]["accuracy"], report.as_dict()["points"][0]["random_accuracy"]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from neuronscope.aggregate.neurons import flat_to_neurons
from neuronscope.attribute.registry import get_method
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.measure.baselines import random_neurons_like
from neuronscope.measure.metrics import summarise
from neuronscope.models.adapter import get_adapter
from neuronscope.results.base import JsonResult
from neuronscope.results.scores import NeuronScores
from neuronscope.trace import Intervention, PositionSpec, intervene


def deep_layers(n_layers: int, fraction: float = 0.25) -> list[int]:
    """The last ``ceil(fraction · n_layers)`` layers (at least one): the default layers to prune.

    Example:
        >>> deep_layers(30)
        [22, 23, 24, 25, 26, 27, 28, 29]
    """
    if not 0 < fraction <= 1:
        raise NeuronscopeError(f"fraction of deep layers must be in (0, 1], got {fraction}")
    count = max(1, math.ceil(fraction * n_layers - 1e-9))
    return list(range(n_layers - count, n_layers))


def top_neurons_in_layers(grid: torch.Tensor, layers: Sequence[int], k: int) -> torch.Tensor:
    """The ``k`` highest-scored neurons ``[k, 2]`` of ``grid [n_layers, d_ff]`` within ``layers`` (ties: lower
    flat index first).

    Example:
        >>> top_neurons_in_layers(torch.tensor([[9.0, 0.0], [1.0, 2.0]]), [1], 1).tolist()
        [[1, 1]]
    """
    n_layers, d_ff = grid.shape
    available = len(layers) * d_ff
    if not 0 <= k <= available:
        raise NeuronscopeError(f"cannot keep {k} neurons: the {len(layers)} pruned layers have {available}")
    masked = torch.full_like(grid, float("-inf"), dtype=torch.float64)
    index = torch.as_tensor(list(layers), dtype=torch.long)
    masked[index] = grid[index].double()
    flat = masked.flatten()
    # stable descending order: ties keep the lower flat index first
    order = torch.sort(-flat, stable=True).indices[:k]
    return flat_to_neurons(order, d_ff)


def pruning_interventions(kept: torch.Tensor, layers: Sequence[int], d_ff: int,
                          positions: PositionSpec = "all") -> list[Intervention]:
    """Zero every neuron of ``layers`` except ``kept [n, 2]`` at ``positions`` (default all)."""
    kept = torch.as_tensor(kept, dtype=torch.long).reshape(-1, 2)
    out = []
    for layer in layers:
        keep = torch.zeros(d_ff, dtype=torch.bool)
        keep[kept[kept[:, 0] == layer, 1]] = True
        pruned = (~keep).nonzero(as_tuple=True)[0]
        if len(pruned):
            out.append(Intervention("neuron", int(layer), "scale", 0.0, pruned, positions))
    return out


@torch.no_grad()
def task_accuracy(model: nn.Module, batch: Batch, targets: TargetSet, batch_size: int = 16) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """Per row: whether the first target is the top-1 token at its position, and its probability (``[batch]``
    each, CPU). Runs under whatever interventions are active around the call."""
    correct, probabilities = [], []
    for start in range(0, len(batch), batch_size):
        rows = list(range(start, min(start + batch_size, len(batch))))
        logits = model(**batch.select(rows).inputs).logits
        logits = logits if logits.dtype == torch.float64 else logits.float()
        positions = targets.positions[rows, 0].to(logits.device)
        picked = logits[torch.arange(len(rows), device=logits.device), positions]  # [b, V]
        ids = targets.token_ids[rows, 0].to(logits.device)
        correct.append((picked.argmax(-1) == ids).cpu())
        probabilities.append(picked.softmax(-1).gather(-1, ids[:, None])[:, 0].cpu())
    return torch.cat(correct), torch.cat(probabilities)


@dataclass
class PruningPoint(JsonResult):
    """Results of keeping ``keep`` neurons: top-scored and random (one value per draw)."""

    format: ClassVar[str] = "neuronscope.pruning_point"

    keep: int
    kept: list[list[int]]
    accuracy: float
    mean_probability: float
    random_accuracy: list[float] = field(default_factory=list)
    random_mean_probability: list[float] = field(default_factory=list)
    random_kept: list[list[list[int]]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"keep": self.keep, "accuracy": self.accuracy,
                               "mean_probability": self.mean_probability, "random_accuracy": self.random_accuracy,
                               "random_mean_probability": self.random_mean_probability, "kept": self.kept,
                               "random_kept": self.random_kept}
        if self.random_accuracy:
            out["random_accuracy_summary"] = summarise(self.random_accuracy).as_dict()
        return out


@dataclass
class PruningReport(JsonResult):
    """Accuracy of the full model and of each pruning point."""

    format: ClassVar[str] = "neuronscope.pruning"

    layers: list[int]
    d_ff: int
    n_examples: int
    full_accuracy: float
    full_mean_probability: float
    points: list[PruningPoint] = field(default_factory=list)
    positions: str = "all"

    def as_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "d_ff": self.d_ff, "n_examples": self.n_examples,
                "neurons_in_layers": len(self.layers) * self.d_ff, "full_accuracy": self.full_accuracy,
                "full_mean_probability": self.full_mean_probability, "positions": self.positions,
                "points": [point.as_dict() for point in self.points]}

    def summary(self) -> str:
        lines = [f"full model: accuracy {self.full_accuracy:.1%} on {self.n_examples} examples "
                 f"({len(self.layers)} layers x {self.d_ff} neurons)"]
        for point in self.points:
            line = f"keep {point.keep}: accuracy {point.accuracy:.1%}"
            if point.random_accuracy:
                mean = sum(point.random_accuracy) / len(point.random_accuracy)
                line += f"; random {mean:.1%} (mean of {len(point.random_accuracy)} draws)"
            lines.append(line)
        return "\n".join(lines)


def prune_experiment(
    model: nn.Module,
    batch: Batch,
    targets: TargetSet,
    *,
    keep: int | Sequence[int],
    scores: NeuronScores | torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
    method: str = "log_probability_increase",
    method_options: dict[str, Any] | None = None,
    n_random: int = 3,
    seed: int = 0,
    positions: PositionSpec = "all",
    batch_size: int = 16,
) -> PruningReport:
    """Keep only the top-scored neurons of ``layers`` and measure task accuracy, vs keeping random ones.

    Args:
        model: the model.
        batch, targets: the task's prompts and their answers (the first target of each row, at its position).
        keep: how many neurons to keep in all of ``layers`` together (or several counts: one point each).
        scores: neuron scores (``NeuronScores``, or a grid ``[n_layers, d_ff]``); default: computed with
            ``method`` on ``batch`` / ``targets`` for ``layers`` and summed over examples and targets.
        layers: the layers to prune; default the deepest quarter (:func:`deep_layers`).
        method, method_options: the registered attribution method (default ``"log_probability_increase"``, as in
            CNA) and its options (e.g. ``{"candidates": ids}``).
        n_random: random keep-sets per point (same count in each layer), seed ``seed``.
        positions: where neurons are zeroed (default every position).

    Returns:
        :class:`PruningReport`.

    Example:
        >>> report = prune_experiment(model, batch, targets, keep=100, method="contribution")
    """
    adapter = get_adapter(model)
    layer_list = deep_layers(adapter.n_layers) if layers is None else adapter.resolve_layers(list(layers))
    counts = [keep] if isinstance(keep, int) else list(keep)
    if scores is None:
        scores = get_method(method).function(model, batch, targets, layers=layer_list, **(method_options or {}))
    grid = scores.grid(adapter.n_layers) if isinstance(scores, NeuronScores) else torch.as_tensor(scores)
    if tuple(grid.shape) != (adapter.n_layers, adapter.d_ff):
        raise NeuronscopeError(f"scores must cover the model's grid [{adapter.n_layers}, {adapter.d_ff}], got "
                               f"{tuple(grid.shape)}")
    correct, probabilities = task_accuracy(model, batch, targets, batch_size)
    report = PruningReport(layer_list, adapter.d_ff, len(batch), float(correct.double().mean()),
                           float(probabilities.double().mean()),
                           positions=positions if isinstance(positions, str) else "explicit")
    generator = torch.Generator().manual_seed(seed)

    def run(kept: torch.Tensor) -> tuple[float, float]:
        with intervene(model, pruning_interventions(kept, layer_list, adapter.d_ff, positions)):
            hits, probs = task_accuracy(model, batch, targets, batch_size)
        return float(hits.double().mean()), float(probs.double().mean())

    for count in counts:
        kept = top_neurons_in_layers(grid, layer_list, count)
        accuracy, probability = run(kept)
        point = PruningPoint(count, kept.tolist(), accuracy, probability)
        if n_random > 0 and count > 0:
            for draw in random_neurons_like(kept, adapter.d_ff, n_draws=n_random, generator=generator):
                accuracy, probability = run(draw)
                point.random_accuracy.append(accuracy)
                point.random_mean_probability.append(probability)
                point.random_kept.append(draw.tolist())
        elif n_random > 0:  # keeping nothing: random keeps nothing too
            point.random_accuracy = [point.accuracy] * n_random
            point.random_mean_probability = [point.mean_probability] * n_random
        report.points.append(point)
    return report


__all__ = ["PruningPoint", "PruningReport", "deep_layers", "prune_experiment", "pruning_interventions",
           "task_accuracy", "top_neurons_in_layers"]
