"""Does removing a concept's neurons remove the concept from a vision-language model's captions?

Pan et al. 2024 ("Finding and Editing Multi-Modal Neurons in Pre-Trained Transformers") judge multimodal
neurons by what happens to generated captions when the neurons are perturbed. :func:`concept_removal` measures,
for each concept and each number of neurons k, how often the concept is still said in the captions of the images
that show it, with its top-k neurons suppressed (activation × 0 at every generated step), against random neuron
sets with the same number of neurons per layer — and how much every other word's rate moves (specificity).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

from neuronscope.errors import InputError
from neuronscope.inputs import encode_images, generate
from neuronscope.measure.baselines import random_neurons_like
from neuronscope.measure.metrics import concept_rate
from neuronscope.trace import Intervention, intervene, suppress


def caption_images(model: nn.Module, processor: Any, images: Sequence[Any], prompt: str, *,
                   assistant_prefix: str | None = None, interventions: Sequence[Intervention] | None = None,
                   batch_size: int = 16, max_new_tokens: int = 12) -> list[str]:  # fmt: skip
    """Greedy captions of ``images`` (``prompt`` as the user turn, ``assistant_prefix`` opening the answer), with
    ``interventions`` active during generation."""
    captions: list[str] = []
    for start in range(0, len(images), batch_size):
        batch = encode_images(processor, list(images[start : start + batch_size]), prompt,
                              assistant_prefix=assistant_prefix)  # fmt: skip
        with intervene(model, list(interventions or [])):
            captions.extend(generate(model, processor, batch, max_new_tokens=max_new_tokens).texts)
    return captions


@dataclass(frozen=True)
class RemovalRow:
    """One concept and number of neurons: the concept's rate in the captions of its images, before and after."""

    concept: str
    k: int
    images: int  # images that show the concept
    before: float
    after_located: float
    after_random: float  # mean over the random draws
    other_words_change_located: float  # mean |rate change| of the other words (over all images, or each word's own)
    other_words_change_random: float


def concept_removal(
    model: nn.Module,
    processor: Any,
    images: Sequence[Any],
    shows: Mapping[str, Sequence[int]],
    neurons: Mapping[str, Tensor],
    ks: Sequence[int],
    *,
    prompt: str,
    assistant_prefix: str | None = None,
    d_ff: int,
    words: Sequence[str] | None = None,
    n_random: int = 1,
    seed: int = 0,
    make_interventions: Callable[[Tensor], list[Intervention]] | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 12,
    word_images: Mapping[str, Sequence[int]] | None = None,
) -> list[RemovalRow]:
    """Suppress each concept's top-k neurons while captioning, and measure the concept's and the others' rates.

    Args:
        model, processor: a vision-language model and its processor.
        images: the images to caption.
        shows: concept → indices of the images that show it (the concept's rate is measured on those).
        neurons: concept → its located neurons, ``[n, 2]`` (layer, index) rows, best first (n ≥ max(ks)).
        ks: numbers of top neurons to remove, e.g. ``(10, 30, 100)``.
        prompt, assistant_prefix: the captioning prompt (e.g. Pan et al.'s "Describe the image in few words.").
        d_ff: the FFN width (random sets are drawn per layer among ``0 .. d_ff - 1``, the located set excluded).
        words: the words whose rates measure specificity (default: the concepts).
        n_random: random sets per concept and k (their rates are averaged).
        make_interventions: neurons → interventions (default: activation × 0 at every generated step).
        word_images: word → indices of the images that show it: each other word's rate is then measured over the
            images that show that word, as the concept's own rate is (default: over all images).

    Returns:
        One :class:`RemovalRow` per concept and k.
    """
    missing = [c for c in shows if c not in neurons]
    if missing:
        raise InputError(f"no located neurons for {missing}: locate them first, or drop them from `shows`")
    short = {c: len(neurons[c]) for c in shows if len(neurons[c]) < max(ks)}
    if short:
        raise InputError(f"fewer located neurons than k={max(ks)} for {short}: locate more (a larger top_k)")
    words = list(words or shows)
    make = make_interventions or (lambda chosen: suppress(chosen, positions="last"))

    def run(interventions: list[Intervention] | None) -> list[str]:
        return caption_images(model, processor, images, prompt, assistant_prefix=assistant_prefix,
                              interventions=interventions, batch_size=batch_size, max_new_tokens=max_new_tokens)  # fmt: skip

    def rate(texts: list[str], word: str) -> float:
        rows = (word_images or {}).get(word)
        return concept_rate(texts if rows is None else [texts[i] for i in rows], word)

    def rates(texts: list[str], concept: str) -> tuple[float, dict[str, float]]:
        own = concept_rate([texts[i] for i in shows[concept]], concept)
        return own, {w: rate(texts, w) for w in words if w != concept and (word_images is None or w in word_images)}

    base = run(None)
    rows = []
    for concept in shows:
        before, base_other = rates(base, concept)
        for k in ks:
            chosen = neurons[concept][:k]
            own, other = rates(run(make(chosen)), concept)
            draws = random_neurons_like(chosen, d_ff, n_draws=n_random, seed=seed + k, exclude_given=True)
            random_own, random_change = [], []
            for draw in draws:
                r_own, r_other = rates(run(make(draw)), concept)
                random_own.append(r_own)
                random_change.append(_mean_change(r_other, base_other))
            rows.append(RemovalRow(
                concept=concept, k=k, images=len(shows[concept]), before=before, after_located=own,
                after_random=sum(random_own) / len(random_own),
                other_words_change_located=_mean_change(other, base_other),
                other_words_change_random=sum(random_change) / len(random_change),
            ))  # fmt: skip
    return rows


def _mean_change(after: Mapping[str, float], before: Mapping[str, float]) -> float:
    return sum(abs(after[w] - before[w]) for w in before) / max(1, len(before))


def removal_records(rows: Sequence[RemovalRow], digits: int = 3) -> list[dict[str, Any]]:
    """Rows as rounded dicts (for CSV / JSON)."""
    return [{k: round(v, digits) if isinstance(v, float) else v for k, v in asdict(row).items()} for row in rows]
