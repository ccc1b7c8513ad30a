"""The LoRA mechanism and CNA-chosen pruning + LoRA (Yu & Ananiadou 2024, arithmetic paper, DESIGN §3.3).

**Mechanism** (:func:`lora_mechanism`): CNA between the base model (A) and its LoRA-tuned copy (B) — the LPI of
every FFN neuron for each prompt's answer in both, read at the base run's final-norm scale (the reference's
choice), ``difference = LPI_B − LPI_A`` averaged over the prompts. The paper finds that LoRA raises the answer's
probability by **amplifying the coefficient scores** (activations ``a_i``) of prediction-related FFN neurons in
deep layers. We report, for the top-``k`` neurons by that difference: their layers, their mean coefficient at the
answer position in A and in B, and whether their value vectors promote the answer vocabulary (``answer_ids``
among their top tokens) — against random neurons with the same number in each layer.

**Pruning** (:func:`cna_pruning`): in the pruned layers keep only a fraction (the paper: 5 %) of the FFN neurons —
those with the largest CNA difference between the original and a LoRA model — zero every other one at every
position (a pruned neuron writes nothing), train a **new** LoRA on the pruned model, and measure held-out
accuracy; the same with random keep-sets (same count per layer). Paper: 82.3 % (CNA) vs 17.1 % (random) at 95 %
pruned.

Example:
    >>> mechanism, cna = lora_mechanism(model, tuned.model, batch, targets, top_k=20, answer_ids=digit_ids)
    >>> mechanism.summary()["coefficient_ratio"]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuronscope.attribute.comparative import ComparativeScores, comparative
from neuronscope.explain.top_tokens import top_tokens
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.measure.baselines import random_neurons_like
from neuronscope.measure.lora import train_lora
from neuronscope.measure.pruning import pruning_interventions, task_accuracy, top_neurons_in_layers
from neuronscope.models.adapter import get_adapter
from neuronscope.trace import capture, intervene


@torch.no_grad()
def coefficients(model: nn.Module, batch: Batch, targets: TargetSet, neurons: torch.Tensor) -> torch.Tensor:
    """``[examples, n]`` activations (coefficient scores) of ``neurons [n, 2]`` at each row's first target."""
    neurons = torch.as_tensor(neurons, dtype=torch.long).reshape(-1, 2)
    layers = sorted({int(layer) for layer in neurons[:, 0].tolist()})
    positions = targets.positions[:, :1]
    with capture(model, sites="neuron", layers=layers, positions=positions, to="cpu") as acts:
        model(**batch.inputs)
    return torch.stack([acts.get("neuron", int(layer))[:, 0, int(index)].float()
                        for layer, index in neurons.tolist()], dim=1)


def promotes(token_ids: torch.Tensor, answer_ids: Sequence[int]) -> torch.Tensor:
    """Pure: ``[n]`` whether each row of top-token ids ``[n, k]`` holds one of ``answer_ids``."""
    return torch.isin(token_ids, torch.as_tensor(list(answer_ids), dtype=torch.long)).any(-1)


@dataclass
class LoRAMechanism:
    """What LoRA changed in the top CNA neurons (one entry per neuron, best first) and in random neurons."""

    neurons: list[list[int]]
    cna: list[float]
    lpi_base: list[float]
    lpi_lora: list[float]
    coefficient_base: list[float]
    coefficient_lora: list[float]
    promotes_answer: list[bool]
    top_tokens: list[list[str]]
    n_layers: int
    random_coefficient_base: list[float] = field(default_factory=list)
    random_coefficient_lora: list[float] = field(default_factory=list)
    random_promotes_answer: list[bool] = field(default_factory=list)

    @staticmethod
    def _ratio(after: list[float], before: list[float]) -> float | None:
        low = sum(abs(v) for v in before)
        return sum(abs(v) for v in after) / low if low > 0 else None

    @staticmethod
    def _median_ratio(after: list[float], before: list[float]) -> float | None:
        ratios = [abs(b) / abs(a) for a, b in zip(before, after, strict=True) if a != 0]
        return float(torch.tensor(ratios, dtype=torch.float64).median()) if ratios else None

    def summary(self) -> dict[str, Any]:
        """Σ|coefficient| after / before and the median of |after| / |before| (top neurons and random), the fraction whose |coefficient| grew,
        the fraction promoting the answer vocabulary, the layer counts."""
        grew = [abs(b) > abs(a) for a, b in zip(self.coefficient_base, self.coefficient_lora, strict=True)]
        random_grew = [abs(b) > abs(a) for a, b in zip(self.random_coefficient_base, self.random_coefficient_lora,
                                                        strict=True)]
        counts = torch.bincount(torch.tensor([n[0] for n in self.neurons], dtype=torch.long),
                                minlength=self.n_layers).tolist() if self.neurons else []
        deep = sum(1 for n in self.neurons if n[0] >= self.n_layers // 2)
        return {
            "top_k": len(self.neurons), "layer_counts": counts,
            "fraction_in_deep_half": deep / len(self.neurons) if self.neurons else None,
            "mean_cna": sum(self.cna) / len(self.cna) if self.cna else None,
            "coefficient_ratio": self._ratio(self.coefficient_lora, self.coefficient_base),
            "median_coefficient_ratio": self._median_ratio(self.coefficient_lora, self.coefficient_base),
            "fraction_amplified": sum(grew) / len(grew) if grew else None,
            "fraction_promoting_answer": sum(self.promotes_answer) / len(self.promotes_answer)
            if self.promotes_answer else None,
            "random_coefficient_ratio": self._ratio(self.random_coefficient_lora, self.random_coefficient_base),
            "random_median_coefficient_ratio": self._median_ratio(self.random_coefficient_lora,
                                                                  self.random_coefficient_base),
            "random_fraction_amplified": sum(random_grew) / len(random_grew) if random_grew else None,
            "random_fraction_promoting_answer": (sum(self.random_promotes_answer) / len(self.random_promotes_answer)
                                                 if self.random_promotes_answer else None),
        }

    def rows(self) -> list[dict[str, Any]]:
        return [{"layer": n[0], "index": n[1], "cna": c, "lpi_base": a, "lpi_lora": b, "coefficient_base": ca,
                 "coefficient_lora": cb, "promotes_answer": p, "top_tokens": " ".join(t)}
                for n, c, a, b, ca, cb, p, t in zip(self.neurons, self.cna, self.lpi_base, self.lpi_lora,
                                                    self.coefficient_base, self.coefficient_lora,
                                                    self.promotes_answer, self.top_tokens, strict=True)]


def cna_grid(cna: ComparativeScores) -> torch.Tensor:
    """``[n_layers, d_ff]`` the CNA difference averaged over examples (first target)."""
    return cna.dense()[:, 0].float().mean(0)


def lora_mechanism(
    base: nn.Module,
    tuned: nn.Module,
    batch: Batch,
    targets: TargetSet,
    *,
    top_k: int = 20,
    answer_ids: Sequence[int] = (),
    tokenizer: Any = None,
    candidates: Sequence[int] | None = None,
    n_random: int = 3,
    seed: int = 0,
    final_norm: str = "original",
) -> tuple[LoRAMechanism, ComparativeScores]:
    """CNA between ``base`` and its LoRA copy ``tuned`` and the coefficients of the top-``top_k`` neurons.

    Args:
        base, tuned: the two models (same architecture).
        batch, targets: prompts and their answer tokens (the first target of each row).
        top_k: neurons reported (largest mean ``LPI_tuned − LPI_base``).
        answer_ids: the answer vocabulary (e.g. the ten digits): a neuron is prediction-related when one of
            these is among its value vector's top-10 tokens.
        tokenizer: for the top tokens' strings.
        candidates: LPI over ``candidates ∪ targets`` (exact log-softmax over that set); default full vocabulary.
        n_random, seed: random neuron sets with the same count per layer (never the top ones).
        final_norm: ``"original"`` (default, the base run's scale for both) or ``"own"``.

    Returns:
        ``(LoRAMechanism, the ComparativeScores)``.
    """
    options = {} if candidates is None else {"candidates": list(candidates)}
    cna = comparative(base, batch, targets, model_b=tuned, final_norm=final_norm, **options)
    grid = cna_grid(cna)
    adapter = get_adapter(base)
    order = torch.sort(-grid.reshape(-1).double(), stable=True).indices[:top_k]
    neurons = torch.stack([order // adapter.d_ff, order % adapter.d_ff], dim=1)
    lpi_a, lpi_b = (c.dense()[:, 0].float().mean(0).reshape(-1)[order] for c in (cna.condition_a, cna.condition_b))
    found = top_tokens(base, neurons, tokenizer, k=10)
    draws = random_neurons_like(neurons, adapter.d_ff, n_draws=n_random, seed=seed, exclude_given=True,
                                n_layers=adapter.n_layers).reshape(-1, 2) if n_random else torch.zeros(0, 2).long()
    mechanism = LoRAMechanism(
        neurons.tolist(), grid.reshape(-1)[order].tolist(), lpi_a.tolist(), lpi_b.tolist(),
        coefficients(base, batch, targets, neurons).mean(0).tolist(),
        coefficients(tuned, batch, targets, neurons).mean(0).tolist(),
        promotes(found.token_ids, answer_ids).tolist(), found.tokens, adapter.n_layers)
    if len(draws):
        mechanism.random_coefficient_base = coefficients(base, batch, targets, draws).mean(0).tolist()
        mechanism.random_coefficient_lora = coefficients(tuned, batch, targets, draws).mean(0).tolist()
        mechanism.random_promotes_answer = promotes(top_tokens(base, draws, None, k=10).token_ids,
                                                    answer_ids).tolist()
    return mechanism, cna


@dataclass
class PruningRun:
    """One keep-set: accuracy on the evaluation prompts pruned (before), after training a new LoRA on the pruned
    model, and that training's losses."""

    name: str
    kept: int
    accuracy_pruned: float
    accuracy_retrained: float
    losses: list[float] = field(default_factory=list)
    layer_counts: list[int] = field(default_factory=list)
    kept_neurons: list[list[int]] = field(default_factory=list)


def cna_pruning(
    base: nn.Module,
    grid: torch.Tensor,
    train: tuple[Batch, TargetSet],
    evaluate: tuple[Batch, TargetSet],
    *,
    layers: Sequence[int],
    keep_fraction: float = 0.05,
    n_random: int = 1,
    seed: int = 0,
    lora: dict[str, Any] | None = None,
) -> list[PruningRun]:
    """Keep the top ``keep_fraction`` of ``layers``' neurons by ``grid`` (CNA between the original and a LoRA
    model), prune the rest, train a new LoRA on the pruned model, and measure; then random keep-sets.

    Args:
        base: the original model (left unchanged: pruning is an intervention at every position).
        grid: ``[n_layers, d_ff]`` the scores that choose the kept neurons (:func:`cna_grid`).
        train, evaluate: (batch, targets) to train the new LoRA on and to measure accuracy on.
        layers: the pruned layers.
        keep_fraction: the fraction kept (default 0.05: 95 % pruned, as the paper).
        n_random, seed: random keep-sets with the CNA set's count in each layer.
        lora: options of :func:`neuronscope.measure.lora.train_lora` (rank, steps, learning_rate, ...).

    Returns:
        One :class:`PruningRun` for the CNA keep-set (``"cna"``), then one per random draw (``"random k"``).
    """
    adapter = get_adapter(base)
    count = max(1, round(keep_fraction * len(layers) * adapter.d_ff))
    kept = top_neurons_in_layers(grid, list(layers), count)
    sets = [("cna", kept)] + [(f"random {i}", draw) for i, draw in enumerate(
        random_neurons_like(kept, adapter.d_ff, n_draws=n_random, seed=seed, n_layers=adapter.n_layers))]
    runs = []
    for name, keep in sets:
        pruning = pruning_interventions(keep, list(layers), adapter.d_ff, positions="all")
        with intervene(base, pruning):
            before = float(task_accuracy(base, *evaluate)[0].double().mean())
        tuned = train_lora(base, *train, interventions=pruning, seed=seed, **(lora or {}))
        with intervene(tuned.model, pruning):
            after = float(task_accuracy(tuned.model, *evaluate)[0].double().mean())
        runs.append(PruningRun(name, len(keep), before, after, tuned.losses,
                               torch.bincount(keep[:, 0], minlength=adapter.n_layers).tolist(), keep.tolist()))
        del tuned
    return runs


__all__ = ["LoRAMechanism", "PruningRun", "cna_grid", "cna_pruning", "coefficients", "lora_mechanism", "promotes"]
