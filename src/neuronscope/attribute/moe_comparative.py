"""Comparative neuron analysis (CNA) on a mixture-of-experts model: :func:`neuronscope.attribute.comparative`
gives an :class:`ExpertComparativeScores` there (``values`` = condition B − condition A over the ``(layer,
expert, index)`` neurons, both conditions kept). Conditions may differ by prompts, by interventions — expert
neurons suppressed, an expert dropped (``drop_expert``), a routing forced — or by model.

Example:
    >>> cna = comparative(model, batch, interventions_b=[drop_expert(3, 5, mode="reroute")], layers=[4])
    >>> cna.top_table(10)                  # neurons whose LPI grows most when expert 5 of layer 3 is re-routed
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neuronscope.results.expert_scores import ExpertNeuronScores


@dataclass
class ExpertComparativeScores(ExpertNeuronScores):
    """``values`` = B − A (``top_k`` / ``unit_scores`` / ``save`` as any expert scores), with both conditions;
    ``save(path)`` also writes ``<path>_a`` and ``<path>_b``."""

    condition_a: ExpertNeuronScores | None = None
    condition_b: ExpertNeuronScores | None = None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        for suffix, scores in (("_a", self.condition_a), ("_b", self.condition_b)):
            if scores is not None:
                scores.save(path.with_name(path.stem + suffix))
        return super().save(path)

    @classmethod
    def load(cls, path: str | Path) -> ExpertComparativeScores:
        path = Path(path)
        difference = ExpertNeuronScores.load(path)
        a, b = (ExpertNeuronScores.load(path.with_name(path.stem + suffix)) for suffix in ("_a", "_b"))
        return cls(difference.values, difference.layout, difference.indices, difference.bias, difference.meta, a, b)


def expert_comparative(scores_a: ExpertNeuronScores, scores_b: ExpertNeuronScores,
                       meta: dict[str, Any]) -> ExpertComparativeScores:
    """B − A of two conditions' expert scores over the same layout."""
    bias = None
    if scores_a.bias is not None or scores_b.bias is not None:
        zeros = torch.zeros(*scores_a.values.shape[:2], len(scores_a.layout.units))
        bias = (scores_b.bias if scores_b.bias is not None else zeros) - (
            scores_a.bias if scores_a.bias is not None else zeros)
    return ExpertComparativeScores(scores_b.dense() - scores_a.dense(), scores_a.layout, None, bias, meta,
                                   scores_a, scores_b)


def describe_expert_item(item: Any) -> dict[str, Any]:
    """An expert or routing intervention as JSON-ready data (for CNA metadata)."""
    if hasattr(item, "kind"):
        return {"routing": item.kind, "layer": item.layer, "experts": list(item.experts),
                "positions": item.positions if isinstance(item.positions, str) else "explicit"}
    neurons = None if item.neurons is None else torch.as_tensor(item.neurons).tolist()
    value = item.value if isinstance(item.value, (int, float)) else "tensor"
    return {"site": "neuron", "layer": item.layer, "expert": item.expert, "op": item.op, "value": value,
            "neurons": neurons, "positions": item.positions if isinstance(item.positions, str) else "explicit"}
