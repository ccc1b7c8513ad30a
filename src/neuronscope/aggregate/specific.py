"""Specific neurons: what the target prompts need and the background prompts do not.

The methods rank first the neurons that carry *any* answer after a template ("answer after 'The capital of X is'"),
so the top neurons of one fact are mostly the same for every fact of its template. Given the scores of the target
prompts (one fact: its prompt, or several paraphrases of it) and of background prompts (other facts of the same
template, other templates; each scored for its *own* answer), a selection rule keeps the target's neurons that
the background does not share:

- ``"plain"``: the mean target score (today's selection; the background is not used).
- ``"contrast"``: the difference of comparative neuron analysis (CNA, Yu & Ananiadou 2024) between the target and
  the background condition, on scores normalised per prompt (``ŝ_p = s_p / max_n s_p(n)``, so every prompt's best
  neuron is 1 whatever the method's units): ``mean_p ŝ_p(n) − strength · mean_b ŝ_b(n)``; only neurons with a
  positive difference are candidates.
- ``"inverse-frequency"``: QRNCA's inverse cluster attribution and common-neuron removal (Chen, Dejl & Toni 2024,
  :mod:`.qrnca`) with the target as one query and each background prompt as another: the target's cluster
  (``score > membership × max`` per prompt, summed, normalised to 1) times ``ICA(n) = ln(N / (occ(n) + 1))``, where
  occ counts the clusters (target and background) holding n and N the clusters; neurons with
  ``occ > strength × N`` (common neurons) are removed, and only ``NAICA > 0`` are candidates.

and, for any rule, **paraphrase agreement** (Dai et al. 2022): with ``agreement = k``, only neurons in the top set
(``score > membership × max``) of at least k of the n target prompts are candidates.

Example:
    >>> target = torch.tensor([[[1.0, 0.9, 0.0, 0.2]]])              # one prompt, 1 layer, 4 neurons
    >>> background = torch.tensor([[[0.1, 1.0, 0.0, 0.0]], [[0.0, 1.0, 0.3, 0.0]]])
    >>> select_specific(target, background, top_k=2)[0].tolist()    # neuron 1 is everyone's: dropped
    [[0, 0], [0, 3]]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from neuronscope.aggregate.neurons import _check_neuron_scores
from neuronscope.aggregate.select import select_neurons, threshold_relative_mask
from neuronscope.errors import InputError, NeuronscopeError

__all__ = ["RULES", "SpecificSelection", "agreement_mask", "contrast_scores", "inverse_frequency_scores",
           "normalise_per_prompt", "select_specific", "specific_scores"]

RULES = ("plain", "contrast", "inverse-frequency")


@dataclass(frozen=True)
class SpecificSelection:
    """How the specific neurons are chosen (see the module docstring).

    Attributes:
        rule: ``"plain"``, ``"contrast"`` (default) or ``"inverse-frequency"``.
        strength: how hard the background pushes: contrast's weight of the background mean (default 1.0, any
            number >= 0; 0 is plain on normalised scores), or inverse-frequency's common-neuron threshold (a
            fraction in [0, 1]: neurons in more than ``strength × N`` clusters are removed).
        agreement: keep only neurons in the top set of at least this many target prompts (paraphrases of one
            fact); None (default) asks nothing of them.
        membership: a prompt's top set is ``score > membership × its maximum`` (Dai's and QRNCA's 0.2).
    """

    rule: str = "contrast"
    strength: float = 1.0
    agreement: int | None = None
    membership: float = 0.2

    def __post_init__(self) -> None:
        problems = []
        if self.rule not in RULES:
            problems.append(f"rule {self.rule!r}: use one of {', '.join(RULES)}")
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) or self.strength < 0:
            problems.append(f"strength must be a number >= 0, got {self.strength!r}")
        elif self.rule == "inverse-frequency" and self.strength > 1:
            problems.append(f"inverse-frequency strength is the common-neuron fraction, in [0, 1]; got {self.strength}")
        if self.agreement is not None and (isinstance(self.agreement, bool) or not isinstance(self.agreement, int)
                                           or self.agreement < 1):
            problems.append(f"agreement must be a positive number of prompts, got {self.agreement!r}")
        if not 0.0 <= float(self.membership) < 1.0:
            problems.append(f"membership must be a fraction in [0, 1), got {self.membership!r}")
        if problems:
            raise NeuronscopeError("; ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def uses_background(self) -> bool:
        return self.rule != "plain"


def _check(target: Tensor, background: Tensor | None, needs_background: bool) -> None:
    _check_neuron_scores(target, min_dim=3, name="target scores")
    if target.dim() != 3 or target.shape[0] == 0:
        raise InputError(f"target scores must be [prompts >= 1, layers, d_ff], got {tuple(target.shape)}")
    if background is None:
        if needs_background:
            raise InputError("this selection rule needs background prompts (other facts of the same template, other "
                             "templates): give their scores, or use rule 'plain'")
        return
    _check_neuron_scores(background, min_dim=3, name="background scores")
    if background.dim() != 3 or background.shape[1:] != target.shape[1:] or background.shape[0] == 0:
        raise InputError(f"background scores must be [prompts >= 1, {target.shape[1]}, {target.shape[2]}] like the "
                         f"target's, got {tuple(background.shape)}; score them with the same model, method and layers")


def normalise_per_prompt(scores: Tensor) -> Tensor:
    """``scores / max`` of each prompt (its maximum over ``[layers, d_ff]``; a prompt whose maximum is <= 0 keeps
    its scores divided by 1), in float64: ``[prompts, layers, d_ff]`` -> same shape.

    Example:
        >>> normalise_per_prompt(torch.tensor([[[2.0, -1.0]], [[-1.0, -3.0]]])).tolist()
        [[[1.0, -0.5]], [[-1.0, -3.0]]]
    """
    scores = scores.detach().to(torch.float64)
    peak = scores.amax(dim=(-2, -1), keepdim=True)
    return scores / torch.where(peak > 0, peak, torch.ones_like(peak))


def agreement_mask(target: Tensor, k: int, membership: float = 0.2) -> Tensor:
    """Neurons in the top set (``score > membership × max``) of at least ``k`` of the prompts: ``[layers, d_ff]``.

    Args:
        target: ``[prompts, layers, d_ff]`` scores of paraphrases of one fact.
        k: how many prompts must agree (``k > prompts`` is refused).

    Example:
        >>> agreement_mask(torch.tensor([[[1.0, 0.5, 0.0]], [[0.1, 1.0, 0.9]]]), 2).tolist()
        [[False, True, False]]
    """
    _check(target, None, False)
    if k > target.shape[0]:
        raise InputError(f"agreement {k} needs at least {k} target prompts (paraphrases of the fact); got "
                         f"{target.shape[0]}: give more prompts or a smaller agreement")
    return threshold_relative_mask(target, membership).sum(dim=0) >= k


def contrast_scores(target: Tensor, background: Tensor, strength: float = 1.0) -> Tensor:
    """CNA between the target and the background: ``mean_p ŝ_p − strength · mean_b ŝ_b`` (float64 ``[layers, d_ff]``).

    Example:
        >>> contrast_scores(torch.tensor([[[2.0, 1.0]]]), torch.tensor([[[0.0, 4.0]]])).tolist()
        [[1.0, -0.5]]
    """
    _check(target, background, True)
    return normalise_per_prompt(target).mean(0) - strength * normalise_per_prompt(background).mean(0)


def inverse_frequency_scores(target: Tensor, background: Tensor, common_threshold: float = 0.3,
                             membership: float = 0.2) -> Tensor:
    """QRNCA's NAICA of the target's cluster against the background prompts' clusters, float64 ``[layers, d_ff]``;
    ``-inf`` outside the cluster, at common neurons and where NAICA <= 0 (see the module docstring).

    Example:
        >>> clusters = torch.eye(3)[:, None]                  # 3 prompts, each its own neuron: ICA = ln(3 / 2)
        >>> inverse_frequency_scores(clusters[:1], clusters[1:], common_threshold=0.5).tolist()
        [[0.4054651081081644, -inf, -inf]]
    """
    from neuronscope.aggregate.qrnca import QRNCAConfig, qrnca_from_clusters, query_cluster

    _check(target, background, True)
    clusters = [query_cluster(target, membership)] + [query_cluster(row[None], membership) for row in background]
    n_layers, d_ff = target.shape[1], target.shape[2]
    config = QRNCAConfig(attr_threshold=membership, common_threshold=common_threshold, top_v=n_layers * d_ff)
    result = qrnca_from_clusters(clusters, config=config)
    out = torch.full((n_layers * d_ff,), float("-inf"), dtype=torch.float64)
    keys = result.key_neurons[0]
    out[keys[:, 0] * d_ff + keys[:, 1]] = result.key_scores[0]
    return out.view(n_layers, d_ff)


def specific_scores(target: Tensor, background: Tensor | None = None,
                    selection: SpecificSelection | None = None) -> tuple[Tensor, Tensor]:
    """The scores a selection ranks by and the neurons it may choose: ``([layers, d_ff] float64, bool mask)``.

    Args:
        target: ``[prompts, layers, d_ff]`` the target prompts' scores (for their answers).
        background: ``[background prompts, layers, d_ff]`` (for their own answers); needed unless rule "plain".
        selection: the rule (default :class:`SpecificSelection`).

    Example:
        >>> scores, allowed = specific_scores(torch.tensor([[[1.0, 3.0]]]), None, SpecificSelection("plain"))
        >>> scores.tolist(), allowed.tolist()
        ([[1.0, 3.0]], [[True, True]])
    """
    selection = selection or SpecificSelection()
    _check(target, background, selection.uses_background)
    if selection.rule == "plain":
        scores = target.detach().to(torch.float64).mean(0)
        allowed = torch.ones_like(scores, dtype=torch.bool)
    elif selection.rule == "contrast":
        scores = contrast_scores(target, background, selection.strength)
        allowed = scores > 0
    else:
        scores = inverse_frequency_scores(target, background, selection.strength, selection.membership)
        allowed = scores > float("-inf")
    if selection.agreement is not None:
        allowed = allowed & agreement_mask(target, selection.agreement, selection.membership)
    return scores, allowed


def select_specific(target: Tensor, background: Tensor | None = None, selection: SpecificSelection | None = None,
                    *, top_k: int | None = 20, threshold: float | None = None,
                    layers: list[int] | None = None) -> tuple[Tensor, Tensor]:
    """The ``top_k`` best allowed neurons (above ``threshold`` × the best allowed score, if given), best first.

    Args:
        target, background, selection: as in :func:`specific_scores`.
        top_k: at most this many (None: every allowed neuron over the threshold).
        threshold: a fraction in [0, 1] of the maximum allowed score.
        layers: the model layer of each score row (default ``0 .. layers - 1``).

    Returns:
        ``(neurons [n, 2] with model layer numbers, their ranking scores [n])``; n may be below ``top_k`` when
        fewer neurons are allowed. Ties: lower layer, then index.

    Example:
        >>> select_specific(torch.tensor([[[1.0, 3.0]]]), None, SpecificSelection("plain"), top_k=1)[0].tolist()
        [[0, 1]]
    """
    scores, allowed = specific_scores(target, background, selection)
    return select_neurons(scores, layers, threshold, top_k, allowed=allowed)
