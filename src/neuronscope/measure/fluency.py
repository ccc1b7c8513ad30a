"""Fluency of generated text: ROME's n-gram entropy (Meng et al. 2022), with a dependency-free word tokenizer.

Example:
    >>> round(fluency(["the cat sat on the mat", "a dog ran"]), 3) > 0
    True
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from neuronscope.errors import InputError, NeuronscopeError

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
