"""Bias editing with CNA (Yu & Ananiadou 2024): zero the neurons whose scores differ most between paired prompts.

For pairs such as ("A woman works as a", "A man works as a") and words such as occupations, the **gap** of word w
on pair p is, by default (``metric="perplexity"``, the paper's measure), the between-gender perplexity difference
``PPL(prompt_a + " " + w) − PPL(prompt_b + " " + w)``, ``PPL(s) = exp(−mean_t log P(s_t | s_<t))`` over every token
of the sentence after its first (:func:`sentence_perplexity`). ``metric="probability"`` keeps our earlier gap
``P(w | prompt_a) − P(w | prompt_b)`` of the word's first token at the end of each prompt, also within the words
(renormalised over them: zeroing neurons that make every word unlikely shrinks the raw gap without making the
model any fairer); it reads only the next-token distribution, so it is cheaper and says directly which occupation
the model would pick, but it ignores the words' later tokens. The
neurons are ranked by ``Σ_{p, w} |score_b − score_a|`` — comparative neuron analysis with a registered base score
(LPI by default) for each word as target — and the top-k are zeroed (an intervention, at every position by default).
The report gives the mean ``|gap|`` before and after, the same for random neurons of the same layer distribution,
and what the change does to unrelated prompts (mean KL of next-token distributions and top-1 agreement).

Example:
    >>> report = bias_experiment(model, tok, [("A woman works as a", "A man works as a")],
    ...                          ["nurse", "engineer", "doctor"], top_k=20, unrelated_prompts=["The sky is"])
    >>> report.summary()["mean_abs_gap"]            # {"before": ..., "after": ..., "random_after": {...}}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuronscope.aggregate.select import top_k_neurons
from neuronscope.attribute.registry import get_method
from neuronscope.errors import InputError, NeuronscopeError
from neuronscope.inputs.batch import Batch, prompt_batch
from neuronscope.inputs.targets import token_targets, word_token
from neuronscope.measure.baselines import random_neurons_like
from neuronscope.measure.edit_metrics import kl_divergence
from neuronscope.measure.metrics import summarise
from neuronscope.measure.probability import last_logits
from neuronscope.models.adapter import get_adapter
from neuronscope.results.scores import NeuronScores
from neuronscope.trace import PositionSpec, intervene, suppress


def probability_gap(logits_a: torch.Tensor, logits_b: torch.Tensor, word_ids: torch.Tensor,
                    within_words: bool = False) -> torch.Tensor:
    """Pure math: ``P(w | a) − P(w | b)`` ``[pairs, words]`` from next-token logits ``[pairs, vocab]`` each.

    ``within_words``: probabilities renormalised over the words only (``softmax`` of their logits), so that a change
    that makes every word unlikely does not pass for a fairer model.

    Example:
        >>> a, b = torch.log(torch.tensor([[0.5, 0.5]])), torch.log(torch.tensor([[0.2, 0.8]]))
        >>> probability_gap(a, b, torch.tensor([0, 1])).tolist()
        [[0.3, -0.30000001192092896]]
    """
    ids = torch.as_tensor(word_ids, dtype=torch.long)
    if within_words:
        return logits_a[:, ids].softmax(-1) - logits_b[:, ids].softmax(-1)
    return logits_a.softmax(-1)[:, ids] - logits_b.softmax(-1)[:, ids]


@torch.no_grad()
def sentence_perplexity(model: nn.Module, processor: Any, sentences: Sequence[str], *,
                        batch_size: int = 32) -> torch.Tensor:
    """``[n]`` float64 perplexities ``exp(−mean_t log P(s_t | s_<t))`` of whole sentences (every token after the
    first; the tokenizer's own special tokens included as it adds them), under whatever interventions are active.

    Example:
        >>> sentence_perplexity(model, tok, ["A woman works as a nurse", "A man works as a nurse"])
    """
    out = []
    for start in range(0, len(sentences), batch_size):
        batch = prompt_batch(processor, list(sentences[start:start + batch_size]), model)
        logits = model(**batch.inputs).logits[:, :-1].double()
        ids = batch.input_ids[:, 1:].to(logits.device)
        log_p = logits.log_softmax(-1).gather(-1, ids[..., None])[..., 0]  # [b, T - 1]
        first = batch.pad_lengths.to(logits.device)[:, None]  # the first real token predicts the next one
        counted = torch.arange(ids.shape[1], device=logits.device)[None] >= first
        out.append((-(log_p * counted).sum(-1) / counted.sum(-1).clamp(min=1)).exp().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def perplexity_gap(model: nn.Module, processor: Any, pairs: Sequence[tuple[str, str]],
                   words: Sequence[str]) -> torch.Tensor:
    """``[pairs, words]`` ``PPL(a + " " + w) − PPL(b + " " + w)`` (:func:`sentence_perplexity`)."""
    sentences_a = [f"{a} {word}" for a, _ in pairs for word in words]
    sentences_b = [f"{b} {word}" for _, b in pairs for word in words]
    both = sentence_perplexity(model, processor, sentences_a + sentences_b)
    return (both[: len(sentences_a)] - both[len(sentences_a):]).view(len(pairs), len(words))


METRICS = ("perplexity", "probability")


@dataclass
class BiasReport:
    """Gaps ``[pairs][words]`` before / after zeroing the neurons, for random neurons, and locality."""

    pairs: list[tuple[str, str]]
    words: list[str]
    neurons: list[list[int]]
    gap_before: list[list[float]]
    gap_after: list[list[float]]
    within_before: list[list[float]] = field(default_factory=list)
    within_after: list[list[float]] = field(default_factory=list)
    random_gap_after: list[list[list[float]]] = field(default_factory=list)
    random_within_after: list[list[list[float]]] = field(default_factory=list)
    random_neurons: list[list[list[int]]] = field(default_factory=list)
    unrelated_kl: float | None = None
    unrelated_top1_agreement: float | None = None
    random_unrelated_kl: list[float] = field(default_factory=list)
    random_unrelated_top1_agreement: list[float] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def mean_abs(gaps: list[list[float]]) -> float:
        return float(torch.tensor(gaps, dtype=torch.float64).abs().mean())

    def headline(self) -> dict[str, Any]:
        """Mean ``|gap|`` (raw, and within the words) before / after / for random neurons, the relative reductions,
        and locality."""
        out: dict[str, Any] = {"metric": self.meta.get("metric", "probability"), "unrelated_kl": self.unrelated_kl,
                               "unrelated_top1_agreement": self.unrelated_top1_agreement}
        for name, before_gaps, after_gaps, random_gaps in (
                ("", self.gap_before, self.gap_after, self.random_gap_after),
                ("within_words_", self.within_before, self.within_after, self.random_within_after)):
            if not before_gaps:
                continue
            before, after = self.mean_abs(before_gaps), self.mean_abs(after_gaps)
            out[f"{name}mean_abs_gap"] = {"before": before, "after": after}
            out[f"{name}relative_reduction"] = (before - after) / before if before > 0 else None
            if random_gaps:
                random_after = [self.mean_abs(gaps) for gaps in random_gaps]
                out[f"{name}mean_abs_gap"]["random_after"] = summarise(random_after).as_dict()
                out[f"{name}random_relative_reduction"] = (
                    summarise([(before - value) / before for value in random_after]).as_dict() if before > 0
                    else None)
        if self.random_unrelated_kl:
            out["random_unrelated_kl"] = summarise(self.random_unrelated_kl).as_dict()
            out["random_unrelated_top1_agreement"] = summarise(self.random_unrelated_top1_agreement).as_dict()
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"pairs": [list(pair) for pair in self.pairs], "words": self.words, "neurons": self.neurons,
                "gap_before": self.gap_before, "gap_after": self.gap_after, "within_before": self.within_before,
                "within_after": self.within_after, "random_gap_after": self.random_gap_after,
                "random_within_after": self.random_within_after, "random_neurons": self.random_neurons,
                "unrelated_kl": self.unrelated_kl,
                "unrelated_top1_agreement": self.unrelated_top1_agreement,
                "random_unrelated_kl": self.random_unrelated_kl,
                "random_unrelated_top1_agreement": self.random_unrelated_top1_agreement,
                "summary": self.headline(), "meta": self.meta}

    def summary(self) -> str:
        found = self.headline()
        gap = found.get("mean_abs_gap", {})
        return (f"mean |gap| {gap.get('before', float('nan')):.4f} -> {gap.get('after', float('nan')):.4f} with "
                f"{len(self.neurons)} neurons zeroed; unrelated top-1 kept {self.unrelated_top1_agreement}")


def bias_neurons(
    model: nn.Module,
    batch_a: Batch,
    batch_b: Batch,
    word_ids: torch.Tensor,
    *,
    top_k: int = 20,
    method: str = "log_probability_increase",
    layers: Sequence[int] | None = None,
    method_options: dict[str, Any] | None = None,
    centre_words: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CNA between paired prompts: the ``top_k`` neurons ``[k, 2]`` with the largest ``Σ |score_b − score_a|`` over
    pairs and words (each word a target at the last position), and that grid ``[n_layers, d_ff]``.

    ``method`` is the base score (a registered name, or a callable with the method signature). With
    ``centre_words`` (default) each neuron's differences are centred over the words first (``d_w − mean_w d``):
    a neuron that moves every word alike (e.g. one that makes "an occupation comes next" likelier) does not
    decide which occupation, and zeroing it harms unrelated prompts without touching the bias.
    """
    ids = torch.as_tensor(word_ids, dtype=torch.long)
    targets = token_targets(batch_a, ids.expand(len(batch_a), -1))
    comparative = get_method("comparative").function
    options = dict(method_options or {})
    if layers is not None:
        options["layers"] = list(layers)
    cna = comparative(model, batch_a, targets, batch_b=batch_b, method=method, **options)
    if centre_words:
        differences = cna.dense()
        cna = NeuronScores(differences - differences.mean(dim=1, keepdim=True), meta={"layers": cna.meta.get("layers")})
    grid = cna.grid(get_adapter(model).n_layers, absolute=True)
    neurons, _ = top_k_neurons(grid, top_k)
    return neurons, grid


def _top1_agreement(original: torch.Tensor, edited: torch.Tensor) -> float:
    return float((original.argmax(-1) == edited.argmax(-1)).double().mean())


def bias_experiment(
    model: nn.Module,
    processor: Any,
    pairs: Sequence[tuple[str, str]],
    words: Sequence[str],
    *,
    neurons: torch.Tensor | None = None,
    top_k: int = 20,
    method: str = "log_probability_increase",
    layers: Sequence[int] | None = None,
    method_options: dict[str, Any] | None = None,
    unrelated_prompts: Sequence[str] | Batch | None = None,
    n_random: int = 3,
    seed: int = 0,
    positions: PositionSpec = "all",
    centre_words: bool = True,
    chat: bool = False,
    metric: str = "perplexity",
) -> BiasReport:
    """Zero the neurons that differ most between paired prompts and measure the paired-probability gap.

    Args:
        model, processor: the model and its tokenizer.
        pairs: ``(prompt_a, prompt_b)`` pairs, e.g. ``("A woman works as a", "A man works as a")``.
        words: the words whose gap is measured (first sub-token with a leading space), e.g. occupations.
        neurons: ``[n, 2]`` neurons to zero; default the ``top_k`` of :func:`bias_neurons`.
        method, layers, method_options: CNA's base score (default LPI), the layers scored, and its options
            (e.g. ``{"candidates": ids}`` for LPI over a candidate set).
        unrelated_prompts: prompts whose next-token distributions should not move (locality).
        n_random, seed: random neuron sets with the same count per layer (never the chosen neurons).
        positions: where the neurons are zeroed (default every position).
        centre_words: rank by differences centred over the words (see :func:`bias_neurons`).
        metric: the gap: ``"perplexity"`` (default, the paper's between-gender perplexity difference of the
            completed sentences, always without a chat template) or ``"probability"`` (the next-token probability
            gap, plus its within-words form).

    Returns:
        :class:`BiasReport`.

    Example:
        >>> report = bias_experiment(model, tok, [("A woman works as a", "A man works as a")], ["nurse", "engineer"])
        >>> report.summary()["relative_reduction"]
    """
    pairs = [tuple(pair) for pair in pairs]
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise InputError("give at least one pair of prompts (prompt_a, prompt_b)")
    if not words:
        raise InputError("give the words whose gap to measure (e.g. occupations)")
    if metric not in METRICS:
        raise InputError(f"metric {metric!r}: use one of {', '.join(METRICS)}")
    adapter = get_adapter(model)
    batch_a = prompt_batch(processor, [a for a, _ in pairs], model, chat)
    batch_b = prompt_batch(processor, [b for _, b in pairs], model, chat)
    word_ids = torch.tensor([word_token(processor, word, first_piece=True) for word in words], dtype=torch.long)
    unrelated = None if unrelated_prompts is None else prompt_batch(processor, unrelated_prompts, model, chat)
    if neurons is None:
        neurons, _ = bias_neurons(model, batch_a, batch_b, word_ids, top_k=top_k, method=method, layers=layers,
                                  method_options=method_options, centre_words=centre_words)
        how = {"selected_by": "comparative", "base_method": method if isinstance(method, str) else "custom",
               "top_k": top_k, "centre_words": centre_words}
    else:
        neurons = torch.as_tensor(neurons, dtype=torch.long).reshape(-1, 2)
        how = {"selected_by": "given"}
    if len(neurons) == 0:
        raise NeuronscopeError("no neurons to zero: give neurons or a top_k of at least 1")

    def gaps() -> tuple[torch.Tensor, torch.Tensor | None]:
        if metric == "perplexity":
            return perplexity_gap(model, processor, pairs, words), None
        logits_a, logits_b = last_logits(model, batch_a), last_logits(model, batch_b)
        return (probability_gap(logits_a, logits_b, word_ids),
                probability_gap(logits_a, logits_b, word_ids, within_words=True))

    base_unrelated = None if unrelated is None else last_logits(model, unrelated)
    before = gaps()

    def zeroed(chosen: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], float | None, float | None]:
        with intervene(model, suppress(chosen, positions)):
            after = gaps()
            if unrelated is None:
                return after, None, None
            edited = last_logits(model, unrelated)
        return after, float(kl_divergence(base_unrelated, edited).mean()), _top1_agreement(base_unrelated, edited)

    after, kl, agreement = zeroed(neurons)
    within = ([], []) if before[1] is None else (before[1].tolist(), after[1].tolist())
    report = BiasReport(list(pairs), list(words), neurons.tolist(), before[0].tolist(), after[0].tolist(),
                        *within, unrelated_kl=kl, unrelated_top1_agreement=agreement,
                        meta={**how, "positions": positions if isinstance(positions, str) else "explicit",
                              "word_ids": word_ids.tolist(), "n_random": n_random, "seed": seed, "metric": metric})
    if n_random > 0:
        draws = random_neurons_like(neurons, adapter.d_ff, n_draws=n_random, seed=seed, exclude_given=True,
                                    n_layers=adapter.n_layers)
        for draw in draws:
            random_after, random_kl, random_agreement = zeroed(draw)
            report.random_gap_after.append(random_after[0].tolist())
            if random_after[1] is not None:
                report.random_within_after.append(random_after[1].tolist())
            report.random_neurons.append(draw.tolist())
            if random_kl is not None:
                report.random_unrelated_kl.append(random_kl)
                report.random_unrelated_top1_agreement.append(random_agreement)
    return report


__all__ = ["METRICS", "BiasReport", "bias_experiment", "bias_neurons", "perplexity_gap", "probability_gap",
           "sentence_perplexity"]
