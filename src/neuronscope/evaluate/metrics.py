"""Evaluation metrics, each with its definition and source.

- Probability change ratio (PCR) of Chen, Dejl & Toni 2024 (QRNCA).
- Concept rate, causal effect and specificity over generated captions, in the sense of Pan et al. 2024
  (multimodal neurons).
- Knowledge-editing metrics in the sense of ROME (Meng et al. 2022) and EasyEdit (Wang et al. 2024):
  reliability, generalisation, locality (token agreement, KL) and fluency (n-gram entropy).

All functions are pure: they take tensors, lists of strings or token ids and return tensors, floats or small
dataclasses. Nothing here runs a model.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from neuronscope.errors import InputError, NeuronscopeError

__all__ = [
    "CausalEffect",
    "ConceptCaptions",
    "SpecificityReport",
    "Summary",
    "causal_effect",
    "compile_concept_pattern",
    "concept_rate",
    "edit_success",
    "fluency",
    "generalisation",
    "kl_divergence",
    "locality_kl",
    "mentions_concept",
    "n_gram_entropy",
    "prefers_target",
    "probability_change_ratio",
    "reliability",
    "sequence_nll",
    "simple_word_tokenize",
    "specificity",
    "summarise",
    "token_accuracy",
    "token_agreement",
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
class CausalEffect:
    """Rates of a concept in captions before / after perturbing neurons.

    Attributes:
        rate_before, rate_after: `concept_rate` of the unperturbed and perturbed captions.
        drop: ``rate_before - rate_after`` (positive = the concept disappears).
        relative_drop: ``drop / rate_before`` (NaN when the concept never appeared before).
    """

    rate_before: float
    rate_after: float
    drop: float
    relative_drop: float


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
class SpecificityReport:
    """Effect of perturbing one concept's neurons on that concept and on the others.

    Attributes:
        target: `CausalEffect` on the target concept's captions.
        others: `CausalEffect` per other concept (same keys as given).
        mean_other_drop: mean ``drop`` over the other concepts (0.0 when there are none).
        specificity: ``target.drop - mean_other_drop``: high when the target concept disappears and the
            others do not (our one-number summary; Pan et al. report the rates themselves).
    """

    target: CausalEffect
    others: dict[str, CausalEffect]
    mean_other_drop: float
    specificity: float


def specificity(
    target: ConceptCaptions, others: Mapping[str, ConceptCaptions], *, plurals: bool = True
) -> SpecificityReport:
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
    return SpecificityReport(target_effect, other_effects, mean_other, target_effect.drop - mean_other)


# --------------------------------------------------------------------------------------------------------------
# knowledge editing (ROME / EasyEdit)
# --------------------------------------------------------------------------------------------------------------

EditRule = Literal["top1", "target_over_source"]


def _check_logits(logits: Tensor, name: str = "logits") -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise InputError(f"{name} must be next-token logits [n, vocab], got {shape}")


def _as_ids(ids: Tensor | Sequence[int], n: int, name: str) -> Tensor:
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if ids.numel() != n:
        raise InputError(f"{name} must hold one token id per prompt ({n}), got {ids.numel()}")
    return ids


def edit_success(
    logits: Tensor,
    target_ids: Tensor | Sequence[int],
    source_ids: Tensor | Sequence[int] | None = None,
    *,
    rule: EditRule = "top1",
) -> Tensor:
    """Per-prompt success of an edit from next-token logits.

    Rules:
        ``"top1"`` (default, EasyEdit's accuracy for a one-token target): the target is the argmax token.
        ``"target_over_source"`` (ROME's efficacy / paraphrase score): ``P(target) > P(source)``, the new
        object more likely than the old one; needs ``source_ids``.

    Args:
        logits: ``[n, vocab]`` next-token logits at the end of each prompt (after the edit).
        target_ids: ``[n]`` the new (target) token of each prompt.
        source_ids: ``[n]`` the old (source / true) token, for ``"target_over_source"``.
        rule: see above.

    Returns:
        ``BoolTensor [n]``.

    Example:
        >>> logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
        >>> edit_success(logits, [1, 2]).tolist()
        [True, False]
        >>> edit_success(logits, [1, 2], [2, 1], rule="target_over_source").tolist()
        [True, True]
    """
    _check_logits(logits)
    target = _as_ids(target_ids, logits.shape[0], "target_ids").to(logits.device)
    if rule == "top1":
        # An exact tie at the maximum is resolved by torch.argmax (the first maximal id).
        return logits.argmax(dim=-1) == target
    if rule == "target_over_source":
        if source_ids is None:
            raise NeuronscopeError(
                'rule "target_over_source" needs source_ids (the old token of each prompt)'
            )
        source = _as_ids(source_ids, logits.shape[0], "source_ids").to(logits.device)
        # Softmax is monotone, so comparing logits compares probabilities.
        return logits.gather(-1, target[:, None]).squeeze(-1) > logits.gather(-1, source[:, None]).squeeze(-1)
    raise NeuronscopeError(f"unknown rule {rule!r}; choose 'top1' or 'target_over_source'")


def reliability(
    logits: Tensor,
    target_ids: Tensor | Sequence[int],
    source_ids: Tensor | Sequence[int] | None = None,
    *,
    rule: EditRule = "top1",
) -> float:
    """Reliability (edit success rate) on the edit prompts themselves: mean of `edit_success`.

    ROME calls it efficacy (rule ``"target_over_source"``); EasyEdit calls it reliability (top-1 accuracy).

    Example:
        >>> reliability(torch.tensor([[0.0, 2.0], [1.0, 0.0]]), [1, 1])
        0.5
    """
    return float(edit_success(logits, target_ids, source_ids, rule=rule).double().mean())


def generalisation(
    paraphrase_logits: Tensor,
    target_ids: Tensor | Sequence[int],
    source_ids: Tensor | Sequence[int] | None = None,
    *,
    rule: EditRule = "top1",
) -> float:
    """Generalisation: `reliability` measured on paraphrases of the edit prompts (ROME: paraphrase score).

    Example:
        >>> generalisation(torch.tensor([[0.0, 2.0]]), [1])
        1.0
    """
    return reliability(paraphrase_logits, target_ids, source_ids, rule=rule)


def sequence_nll(logits: Tensor, target_ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean negative log-likelihood per sequence of teacher-forced target tokens.

    ROME compares multi-token objects by this mean NLL (``prefers_target``).

    Args:
        logits: ``[n, T, vocab]`` logits at the positions that predict each target token.
        target_ids: ``[n, T]`` target tokens.
        mask: ``[n, T]`` True for real tokens (default all).

    Returns:
        float64 ``[n]``.
    """
    if logits.dim() != 3 or target_ids.shape != logits.shape[:2]:
        raise InputError(
            f"logits must be [n, T, vocab] and target_ids [n, T]; got {tuple(logits.shape)} and "
            f"{tuple(target_ids.shape)}"
        )
    mask = torch.ones_like(target_ids, dtype=torch.bool) if mask is None else mask.bool()
    log_probs = (
        torch.log_softmax(logits.double(), dim=-1).gather(-1, target_ids.long()[..., None]).squeeze(-1)
    )
    counts = mask.sum(dim=-1)
    if (counts == 0).any():
        raise InputError("a sequence has no target tokens under the mask; drop it or fix the mask")
    return -(log_probs * mask).sum(dim=-1) / counts


def prefers_target(target_nll: Tensor, source_nll: Tensor) -> Tensor:
    """ROME's multi-token rule: the edit succeeds where the target's mean NLL is below the source's.

    Example:
        >>> prefers_target(torch.tensor([0.5, 2.0]), torch.tensor([1.0, 1.0])).tolist()
        [True, False]
    """
    return torch.as_tensor(target_nll) < torch.as_tensor(source_nll)


def token_accuracy(logits: Tensor, target_ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """EasyEdit's token-level accuracy: per sequence, the fraction of target tokens that are the argmax.

    Args:
        logits: ``[n, T, vocab]`` teacher-forced logits predicting each target token.
        target_ids: ``[n, T]``.
        mask: ``[n, T]`` True for real tokens (default all).

    Returns:
        float64 ``[n]`` in ``[0, 1]``.

    Example:
        >>> logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
        >>> token_accuracy(logits, torch.tensor([[1, 1]])).tolist()
        [0.5]
    """
    if logits.dim() != 3 or target_ids.shape != logits.shape[:2]:
        raise InputError(
            f"logits must be [n, T, vocab] and target_ids [n, T]; got {tuple(logits.shape)} and "
            f"{tuple(target_ids.shape)}"
        )
    mask = torch.ones_like(target_ids, dtype=torch.bool) if mask is None else mask.bool()
    counts = mask.sum(dim=-1)
    if (counts == 0).any():
        raise InputError("a sequence has no target tokens under the mask; drop it or fix the mask")
    correct = (logits.argmax(dim=-1) == target_ids) & mask
    return correct.sum(dim=-1).double() / counts


def token_agreement(
    original_tokens: Sequence[Sequence[int]] | Tensor, edited_tokens: Sequence[Sequence[int]] | Tensor
) -> float:
    """Locality as EasyEdit measures it: agreement of greedy outputs before and after the edit.

    For each unrelated prompt, the fraction of positions of the original greedy output where the edited
    model produced the same token (positions the edited output lacks count as disagreement); then the mean
    over prompts. 1.0 = the edit left these prompts untouched.

    Args:
        original_tokens: per prompt, the token ids the original model generated (greedy).
        edited_tokens: per prompt, the edited model's token ids.

    Example:
        >>> token_agreement([[1, 2, 3, 4], [5, 6]], [[1, 2, 0, 4], [5]])
        0.625
    """
    originals, editeds = list(original_tokens), list(edited_tokens)
    if len(originals) != len(editeds):
        raise InputError(f"got {len(originals)} original outputs but {len(editeds)} edited outputs")
    if not originals:
        raise InputError("no locality prompts given")
    per_prompt = []
    for i, (original, edited) in enumerate(zip(originals, editeds, strict=True)):
        original = torch.as_tensor(original, dtype=torch.long).reshape(-1)
        edited = torch.as_tensor(edited, dtype=torch.long).reshape(-1)
        if original.numel() == 0:
            raise InputError(f"original output {i} is empty; generate at least one token per prompt")
        length = min(original.numel(), edited.numel())
        same = int((original[:length] == edited[:length]).sum())
        per_prompt.append(same / original.numel())
    return sum(per_prompt) / len(per_prompt)


def kl_divergence(original_logits: Tensor, edited_logits: Tensor) -> Tensor:
    """``KL(P_original || P_edited) = sum_v p(v) (log p(v) - log q(v))`` per row, from logits.

    Computed in float64 from log-softmax; terms with ``p(v) = 0`` contribute 0.

    Args:
        original_logits: ``[..., vocab]``.
        edited_logits: ``[..., vocab]``.

    Returns:
        float64 ``[...]`` (in nats).

    Example:
        >>> p = torch.log(torch.tensor([[0.5, 0.5]]))
        >>> q = torch.log(torch.tensor([[0.25, 0.75]]))
        >>> round(kl_divergence(p, q).item(), 6)
        0.143841
    """
    if original_logits.shape != edited_logits.shape:
        raise InputError(
            f"original and edited logits must have the same shape, got {tuple(original_logits.shape)} "
            f"and {tuple(edited_logits.shape)}"
        )
    log_p = torch.log_softmax(original_logits.double(), dim=-1)
    log_q = torch.log_softmax(edited_logits.double(), dim=-1)
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros((), dtype=torch.float64))
    return terms.sum(dim=-1)


def locality_kl(original_logits: Tensor, edited_logits: Tensor) -> float:
    """Mean ``KL(original || edited)`` of next-token distributions over unrelated prompts (0 = unchanged).

    Example:
        >>> locality_kl(torch.zeros(2, 5), torch.zeros(2, 5))
        0.0
    """
    _check_logits(original_logits, "original_logits")
    return float(kl_divergence(original_logits, edited_logits).mean())


# --------------------------------------------------------------------------------------------------------------
# fluency (ROME's n-gram entropy)
# --------------------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def simple_word_tokenize(text: str) -> list[str]:
    """Words (with inner apostrophes) and single punctuation marks: a dependency-free stand-in for NLTK's
    ``word_tokenize``, which ROME uses (results can differ slightly around contractions and quotes).

    Example:
        >>> simple_word_tokenize("The cat's hat, red.")
        ['The', "cat's", 'hat', ',', 'red', '.']
    """
    return _TOKEN.findall(text)


def _n_gram_entropy_bits(tokens: Sequence[str], n: int) -> float:
    counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    total = sum(counts.values())
    if total == 0:
        return 0.0
    return -sum((c / total) * math.log2(c / total) for c in counts.values())


def n_gram_entropy(
    text: str,
    ns: Sequence[int] = (2, 3),
    weights: Sequence[float] = (2 / 3, 4 / 3),
    *,
    tokenize: Callable[[str], Sequence[str]] = simple_word_tokenize,
) -> float:
    """ROME's n-gram entropy of one text: ``mean_j(weights[j] * H_{ns[j]})`` with ``H_n`` in bits.

    ``H_n = -sum_g f(g) log2 f(g)`` over the text's n-grams g with relative frequencies f. With the defaults
    this is ``(2/3 * H_2 + 4/3 * H_3) / 2 = H_2 / 3 + 2 H_3 / 3`` (Meng et al. 2022, "Locating and Editing
    Factual Associations in GPT"; lower = more repetitive). A text with fewer than n tokens has ``H_n = 0``
    (ROME's code would give NaN).

    Example:
        >>> round(n_gram_entropy("a b a b"), 6)  # bigrams ab, ba, ab -> H2 = 0.918296; trigrams aba, bab -> H3 = 1
        0.972765
    """
    if len(ns) != len(weights) or not ns:
        raise NeuronscopeError("ns and weights must be non-empty and of the same length")
    tokens = list(tokenize(text))
    return sum(w * _n_gram_entropy_bits(tokens, n) for n, w in zip(ns, weights, strict=True)) / len(ns)


def fluency(texts: Iterable[str], **options) -> float:
    """Fluency of generated texts: the arithmetic mean of `n_gram_entropy` over texts (ROME's "GE").

    Takes the keyword options of `n_gram_entropy`.

    Example:
        >>> round(fluency(["a b a b", "a a a a"]), 6)
        0.486383
    """
    values = [n_gram_entropy(text, **options) for text in texts]
    if not values:
        raise InputError("no generated texts given; generate at least one text")
    return sum(values) / len(values)
