"""Evaluation metrics, each with its definition and source.

- Probability change ratio (PCR) of Chen, Dejl & Toni 2024 (QRNCA).
- Concept rate, causal effect and specificity over generated captions, in the sense of Pan et al. 2024
  (multimodal neurons).
- Editing metrics are in :mod:`.edit_metrics`, fluency in :mod:`.fluency`.

All functions are pure: they take tensors, lists of strings or token ids and return tensors, floats or small
dataclasses. Nothing here runs a model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from neuronscope.errors import InputError
from neuronscope.results.base import JsonResult

__all__ = [
    "CausalEffect",
    "ConceptCaptions",
    "ConceptSpecificity",
    "Summary",
    "causal_effect",
    "compile_concept_pattern",
    "concept_rate",
    "mentions_concept",
    "probability_change_ratio",
    "specificity",
    "summarise",
]


# --------------------------------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (Bessel-corrected, 0 for a single value), min, max and count."""

    mean: float
    std: float
    min: float
    max: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "std": self.std, "min": self.min, "max": self.max, "n": self.n}


def summarise(values: Tensor | Sequence[float]) -> Summary:
    """Summary statistics of a 1-D set of values (any shape is flattened).

    Args:
        values: tensor or sequence of numbers; NaN is rejected.

    Returns:
        `Summary` with ``std`` the sample standard deviation (divisor n - 1; 0.0 when n == 1).

    Example:
        >>> summarise([1.0, 2.0, 3.0])
        Summary(mean=2.0, std=1.0, min=1.0, max=3.0, n=3)
    """
    flat = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if flat.numel() == 0:
        raise InputError(
            "cannot summarise an empty set of values; check that the evaluation produced results"
        )
    if torch.isnan(flat).any():
        raise InputError("values contain NaN; check the inputs of the metric (e.g. a zero probability)")
    n = int(flat.numel())
    std = float(flat.std(correction=1)) if n > 1 else 0.0
    return Summary(float(flat.mean()), std, float(flat.min()), float(flat.max()), n)


# --------------------------------------------------------------------------------------------------------------
# probability change ratio
# --------------------------------------------------------------------------------------------------------------


def probability_change_ratio(p_before: Tensor | Sequence[float], p_after: Tensor | Sequence[float]) -> Tensor:
    """Probability change ratio ``PCR = (p_after - p_before) / p_before``, elementwise.

    Chen, Dejl & Toni 2024 ("Identifying Query-Relevant Neurons in Large Language Models for Long-Form Texts",
    arXiv:2406.10868) measure it for the probability of the correct answer when key neurons are boosted
    (activation x 2) or suppressed (set to 0). +1.0 means the probability doubled, -1.0 that it vanished.
    Summarise with `summarise` (mean, std, n).

    Args:
        p_before: ``[...]`` probabilities of the unmodified model, each > 0.
        p_after: ``[...]`` probabilities after the intervention (broadcastable to ``p_before``).

    Returns:
        float64 tensor of the broadcast shape.

    Raises:
        InputError: a probability before <= 0 (the ratio is undefined), or outside [0, 1].

    Example:
        >>> probability_change_ratio([0.2, 0.5], [0.4, 0.25]).tolist()
        [1.0, -0.5]
    """
    before = torch.as_tensor(p_before, dtype=torch.float64)
    after = torch.as_tensor(p_after, dtype=torch.float64)
    for name, p in (("p_before", before), ("p_after", after)):
        if torch.isnan(p).any() or (p < 0).any() or (p > 1).any():
            raise InputError(f"{name} must hold probabilities in [0, 1]; pass softmax outputs, not logits")
    if (before <= 0).any():
        raise InputError(
            "p_before holds a zero probability: PCR is undefined there; drop those examples "
            "(or compute in float32/float64 so tiny probabilities do not underflow)"
        )
    return (after - before) / before


# --------------------------------------------------------------------------------------------------------------
# concepts in generated captions (Pan et al. 2024)
# --------------------------------------------------------------------------------------------------------------


def compile_concept_pattern(words: Sequence[str] | str, *, plurals: bool = True) -> re.Pattern[str]:
    """A case-insensitive regex matching any of the words (synonyms) as whole words.

    Word boundaries are ``(?<!\\w)`` / ``(?!\\w)``, so "cat" does not match "category" or "bobcat", and words
    with punctuation ("t-shirt") work. Inner whitespace of multi-word terms matches any whitespace
    ("hot  dog"). With ``plurals`` (default True) an optional "s" or "es" ending is accepted ("dogs",
    "buses"); list irregular plurals ("mice") as synonyms.

    Example:
        >>> bool(compile_concept_pattern(["dog", "puppy"]).search("Two Dogs play"))
        True
    """
    if isinstance(words, str):
        words = [words]
    cleaned = [w.strip() for w in words if w and w.strip()]
    if not cleaned:
        raise InputError("a concept needs at least one non-empty word (its name and any synonyms)")
    suffix = "(?:e?s)?" if plurals else ""
    alternatives = sorted({r"\s+".join(map(re.escape, w.split())) for w in cleaned}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + ")" + suffix + r"(?!\w)", re.IGNORECASE)


def mentions_concept(texts: Sequence[str], words: Sequence[str] | str, *, plurals: bool = True) -> list[bool]:
    """For each text, whether it mentions the concept (any of ``words``; see `compile_concept_pattern`)."""
    if isinstance(texts, str):
        raise InputError("texts must be a list of strings (one per caption), not a single string")
    pattern = compile_concept_pattern(words, plurals=plurals)
    return [pattern.search(text) is not None for text in texts]


def concept_rate(texts: Sequence[str], words: Sequence[str] | str, *, plurals: bool = True) -> float:
    """Fraction of texts (captions) that mention the concept at least once.

    Pan et al. 2024 ("Finding and Editing Multi-Modal Neurons in Pre-Trained Transformers", Findings of ACL)
    judge the causal effect and specificity of a concept's neurons by how often the concept still appears in
    the captions the model generates after those neurons are perturbed.

    Args:
        texts: generated captions.
        words: the concept's word and synonyms, e.g. ``["dog", "puppy"]``.
        plurals: also match "-s"/"-es" endings. Default True.

    Returns:
        Rate in ``[0, 1]``.

    Example:
        >>> concept_rate(["a dog on grass", "a cat", "two dogs"], "dog")
        0.6666666666666666
    """
    hits = mentions_concept(texts, words, plurals=plurals)
    if not hits:
        raise InputError("no captions given; generate at least one caption per image")
    return sum(hits) / len(hits)


@dataclass(frozen=True)
class CausalEffect(JsonResult):
    """Rates of a concept in captions before / after perturbing neurons.

    Attributes:
        rate_before, rate_after: `concept_rate` of the unperturbed and perturbed captions.
        drop: ``rate_before - rate_after`` (positive = the concept disappears).
        relative_drop: ``drop / rate_before`` (NaN when the concept never appeared before).
    """

    format: ClassVar[str] = "neuronscope.causal_effect"

    rate_before: float
    rate_after: float
    drop: float
    relative_drop: float

    def summary(self) -> str:
        return (f"rate {self.rate_before:.1%} -> {self.rate_after:.1%} (drop {self.drop:+.1%}, "
                f"relative {self.relative_drop:+.1%} of the rate before)")


def causal_effect(
    captions_before: Sequence[str],
    captions_after: Sequence[str],
    words: Sequence[str] | str,
    *,
    plurals: bool = True,
) -> CausalEffect:
    """Causal effect of a concept's neurons on captions (Pan et al. 2024): how much the concept's rate drops.

    Caption the concept's images without and with the perturbation (e.g. Gaussian noise on the value vectors
    of the concept's top neurons, as in the authors' released code); a large drop means the neurons cause
    the concept to be said. Compare against random neurons of the same number (`baselines`).

    Example:
        >>> effect = causal_effect(["a dog", "a dog"], ["a dog", "a field"], ["dog"])
        >>> effect.rate_before, effect.rate_after, effect.drop
        (1.0, 0.5, 0.5)
    """
    before = concept_rate(captions_before, words, plurals=plurals)
    after = concept_rate(captions_after, words, plurals=plurals)
    drop = before - after
    relative = drop / before if before > 0 else math.nan
    return CausalEffect(before, after, drop, relative)


@dataclass(frozen=True)
class ConceptCaptions:
    """One concept's words (name first, then synonyms) and its images' captions before / after a perturbation."""

    words: Sequence[str]
    before: Sequence[str]
    after: Sequence[str]


@dataclass(frozen=True)
class ConceptSpecificity(JsonResult):
    """Effect of perturbing one concept's neurons on that concept and on the others.

    Attributes:
        target: `CausalEffect` on the target concept's captions.
        others: `CausalEffect` per other concept (same keys as given).
        mean_other_drop: mean ``drop`` over the other concepts (0.0 when there are none).
        specificity: ``target.drop - mean_other_drop``: high when the target concept disappears and the
            others do not (our one-number summary; Pan et al. report the rates themselves).
    """

    format: ClassVar[str] = "neuronscope.concept_specificity"

    target: CausalEffect
    others: dict[str, CausalEffect]
    mean_other_drop: float
    specificity: float

    def summary(self) -> str:
        return (f"target: {self.target.summary()}; other concepts' mean drop {self.mean_other_drop:+.1%} "
                f"({len(self.others)} concepts, each on its own images); specificity {self.specificity:+.3f}")


def specificity(
    target: ConceptCaptions, others: Mapping[str, ConceptCaptions], *, plurals: bool = True
) -> ConceptSpecificity:
    """Specificity of a concept's neurons (Pan et al. 2024): perturbing them should remove that concept only.

    The caller perturbs the target concept's neurons, captions the target's images and the other concepts'
    images before and after, and passes the captions. Each concept's rate is counted on its own images.

    Example:
        >>> dog = ConceptCaptions(["dog"], before=["a dog", "a dog"], after=["grass", "a field"])
        >>> cat = ConceptCaptions(["cat"], before=["a cat", "a cat"], after=["a cat", "a cat"])
        >>> report = specificity(dog, {"cat": cat})
        >>> report.target.drop, report.mean_other_drop, report.specificity
        (1.0, 0.0, 1.0)
    """
    target_effect = causal_effect(target.before, target.after, target.words, plurals=plurals)
    other_effects = {
        name: causal_effect(c.before, c.after, c.words, plurals=plurals) for name, c in others.items()
    }
    mean_other = sum(e.drop for e in other_effects.values()) / len(other_effects) if other_effects else 0.0
    return ConceptSpecificity(target_effect, other_effects, mean_other, target_effect.drop - mean_other)
