"""Neuron-based prediction: guess a query's domain (or language) from which domain neurons fire.

Chen, Dejl & Toni 2024 (QRNCA, arXiv:2406.10868, "neuron-based prediction") show that the key neurons are
informative enough to tell a query's domain without reading the model's answer: collect *domain-specific*
neurons (the key neurons that recur most across a domain's queries), then, for a new query, read those
neurons' activations and predict the domain whose neurons respond most. As we read the paper, "respond most"
is the largest mean activation (``rule="mean"``, the default); a count of neurons above an activation
threshold (``rule="count"``) is offered as the alternative reading. The released code has no prediction
script, so the exact rule is not pinned down there.

The accuracy is compared with the majority-class baseline (always predict the most frequent domain).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from neuronscope.aggregate.neurons import check_neurons, flat_to_neurons, neurons_to_flat
from neuronscope.aggregate.select import frequency_of_neuron_sets
from neuronscope.errors import InputError, NeuronscopeError
from neuronscope.results.base import JsonResult

__all__ = [
    "PredictionReport",
    "domain_scores",
    "domain_specific_neurons",
    "evaluate_predictions",
    "neuron_based_prediction",
    "predict_domains",
]

Rule = Literal["mean", "count"]


def domain_specific_neurons(
    key_neurons_by_query: Sequence[Tensor],
    labels: Sequence[str],
    n_layers: int,
    d_ff: int,
    *,
    top: int = 100,
    exclusive: bool = False,
) -> dict[str, Tensor]:
    """The ``top`` most frequent key neurons of each domain's queries.

    Args:
        key_neurons_by_query: per query, its key neurons ``[v_q, 2]`` (e.g. ``QRNCAResult.key_neurons``).
        labels: per query, its domain (or language).
        n_layers, d_ff: the score grid.
        top: neurons kept per domain (fewer if the domain has fewer distinct key neurons). Default 100.
        exclusive: drop neurons that end up selected for more than one domain. Default False.

    Returns:
        ``{domain: LongTensor [<= top, 2]}`` in order of first appearance of each domain, neurons most
        frequent first (ties by ascending (layer, index)).

    Example:
        >>> keys = [torch.tensor([[0, 1]]), torch.tensor([[0, 1], [1, 0]]), torch.tensor([[1, 2]])]
        >>> domain_specific_neurons(keys, ["bio", "bio", "maths"], 2, 3, top=1)
        {'bio': tensor([[0, 1]]), 'maths': tensor([[1, 2]])}
    """
    if len(key_neurons_by_query) != len(labels):
        raise InputError(f"got {len(key_neurons_by_query)} key-neuron sets but {len(labels)} labels")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise NeuronscopeError(f"top must be a positive integer, got {top!r}")
    by_domain: dict[str, list[Tensor]] = {}
    for neurons, label in zip(key_neurons_by_query, labels, strict=True):
        by_domain.setdefault(str(label), []).append(neurons)
    selected: dict[str, Tensor] = {}
    for domain, sets in by_domain.items():
        counts = frequency_of_neuron_sets(sets, n_layers, d_ff).reshape(-1)
        present = torch.nonzero(counts > 0, as_tuple=False).squeeze(1)  # ascending flat index
        order = torch.argsort(counts[present], descending=True, stable=True)[:top]
        selected[domain] = flat_to_neurons(present[order], d_ff)
    if exclusive and selected:
        all_flat = torch.cat([neurons_to_flat(n, d_ff) for n in selected.values()])
        shared = torch.bincount(all_flat, minlength=n_layers * d_ff) > 1
        selected = {d: n[~shared[neurons_to_flat(n, d_ff)]] for d, n in selected.items()}
    return selected


def domain_scores(
    activations: Tensor,
    domain_neurons: Mapping[str, Tensor],
    *,
    rule: Rule = "mean",
    threshold: float = 0.0,
) -> tuple[list[str], Tensor]:
    """Score every domain for every query from the activations of its domain neurons.

    Rules:
        ``"mean"`` (default): mean activation of the domain's neurons (a domain without neurons scores -inf).
        ``"count"``: how many of the domain's neurons have activation > ``threshold``.

    Args:
        activations: ``[..., layers, d_ff]`` activations (or NA scores) of each query at the answer position.
        domain_neurons: ``{domain: [n_d, 2]}``, e.g. from `domain_specific_neurons`.
        rule: see above.
        threshold: activation threshold of ``"count"``. Default 0.0.

    Returns:
        ``(domains, scores [..., n_domains])`` with domains in mapping order; scores are float64.

    Example:
        >>> acts = torch.tensor([[0.0, 2.0, 1.0]])  # 1 layer, 3 neurons
        >>> domains, scores = domain_scores(acts, {"a": torch.tensor([[0, 0], [0, 1]]), "b": torch.tensor([[0, 2]])})
        >>> domains, scores.tolist()
        (['a', 'b'], [1.0, 1.0])
    """
    if not isinstance(activations, Tensor) or activations.dim() < 2:
        raise InputError("activations must be a tensor [..., layers, d_ff]")
    if not domain_neurons:
        raise InputError("no domains given; build domain neurons with domain_specific_neurons()")
    n_layers, d_ff = int(activations.shape[-2]), int(activations.shape[-1])
    flat_acts = activations.detach().reshape(*activations.shape[:-2], n_layers * d_ff).double()
    domains, columns = [], []
    for domain, neurons in domain_neurons.items():
        check_neurons(neurons, n_layers, d_ff, name=f"domain_neurons[{domain!r}]")
        values = flat_acts[..., neurons_to_flat(neurons, d_ff).to(flat_acts.device)]
        if rule == "mean":
            column = (
                values.mean(dim=-1) if values.shape[-1] else flat_acts.new_full(values.shape[:-1], -torch.inf)
            )
        elif rule == "count":
            column = (values > threshold).sum(dim=-1).double()
        else:
            raise NeuronscopeError(f"unknown rule {rule!r}; choose 'mean' or 'count'")
        domains.append(str(domain))
        columns.append(column)
    return domains, torch.stack(columns, dim=-1)


def predict_domains(
    activations: Tensor,
    domain_neurons: Mapping[str, Tensor],
    *,
    rule: Rule = "mean",
    threshold: float = 0.0,
) -> list[str]:
    """Predicted domain of each query: the argmax of `domain_scores` (ties: the earlier domain in the mapping).

    Args:
        activations: ``[queries, layers, d_ff]``.
        domain_neurons, rule, threshold: as in `domain_scores`.

    Returns:
        One domain name per query.

    Example:
        >>> acts = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
        >>> predict_domains(acts, {"x": torch.tensor([[0, 0]]), "y": torch.tensor([[0, 1]])})
        ['x', 'y']
    """
    if activations.dim() != 3:
        raise InputError(f"activations must be [queries, layers, d_ff], got {tuple(activations.shape)}")
    domains, scores = domain_scores(activations, domain_neurons, rule=rule, threshold=threshold)
    # argmax returns the first maximal column, i.e. the earlier domain on ties.
    return [domains[i] for i in scores.argmax(dim=-1).tolist()]


@dataclass(frozen=True)
class PredictionReport(JsonResult):
    """Accuracy of predicted labels against gold labels, next to the majority-class baseline.

    Attributes:
        accuracy: fraction of correct predictions.
        majority_baseline: accuracy of always predicting ``majority_label``.
        majority_label: most frequent gold label (or training label, if given); ties: first seen.
        n: number of queries.
        per_label_accuracy: accuracy (recall) per gold label.
        predictions: the predicted labels, in order.
    """

    format: ClassVar[str] = "neuronscope.prediction"

    accuracy: float
    majority_baseline: float
    majority_label: str
    n: int
    per_label_accuracy: dict[str, float]
    predictions: list[str]

    def summary(self) -> str:
        return (f"accuracy {self.accuracy:.1%} on {self.n} queries; majority baseline {self.majority_baseline:.1%} "
                f"(always '{self.majority_label}')")


def evaluate_predictions(
    predicted: Sequence[str], gold: Sequence[str], *, train_labels: Sequence[str] | None = None
) -> PredictionReport:
    """Accuracy and majority-class baseline.

    Args:
        predicted: predicted label per query.
        gold: true label per query.
        train_labels: if given, the majority label is taken from these (e.g. the queries the domain neurons
            came from) and scored on ``gold``; otherwise from ``gold`` itself.

    Example:
        >>> report = evaluate_predictions(["a", "b", "b", "a"], ["a", "b", "a", "a"])
        >>> report.accuracy, report.majority_baseline, report.majority_label
        (0.75, 0.75, 'a')
    """
    predicted, gold = [str(p) for p in predicted], [str(g) for g in gold]
    if len(predicted) != len(gold):
        raise InputError(f"got {len(predicted)} predictions for {len(gold)} gold labels")
    if not gold:
        raise InputError("no queries to evaluate")
    source = [str(t) for t in train_labels] if train_labels is not None else gold
    if not source:
        raise InputError("train_labels is empty; pass None to take the majority label from the gold labels")
    majority_label = Counter(source).most_common(1)[0][0]
    n = len(gold)
    correct = [p == g for p, g in zip(predicted, gold, strict=True)]
    per_label: dict[str, list[bool]] = {}
    for ok, label in zip(correct, gold, strict=True):
        per_label.setdefault(label, []).append(ok)
    return PredictionReport(
        accuracy=sum(correct) / n,
        majority_baseline=sum(g == majority_label for g in gold) / n,
        majority_label=majority_label,
        n=n,
        per_label_accuracy={label: sum(oks) / len(oks) for label, oks in per_label.items()},
        predictions=predicted,
    )


def neuron_based_prediction(
    activations: Tensor,
    gold: Sequence[str],
    domain_neurons: Mapping[str, Tensor],
    *,
    rule: Rule = "mean",
    threshold: float = 0.0,
    train_labels: Sequence[str] | None = None,
) -> PredictionReport:
    """`predict_domains` then `evaluate_predictions`: the whole neuron-based prediction experiment.

    Example:
        >>> acts = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[2.0, 0.0]]])
        >>> neurons = {"x": torch.tensor([[0, 0]]), "y": torch.tensor([[0, 1]])}
        >>> report = neuron_based_prediction(acts, ["x", "y", "y"], neurons)
        >>> round(report.accuracy, 3), round(report.majority_baseline, 3)
        (0.667, 0.667)
    """
    predicted = predict_domains(activations, domain_neurons, rule=rule, threshold=threshold)
    return evaluate_predictions(predicted, gold, train_labels=train_labels)
