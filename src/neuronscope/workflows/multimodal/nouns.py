"""Target words of a generated caption (Pan et al. 2024): its nouns, or the words of a user-given concept list,
each mapped to the generated step whose token starts it (first sub-token, first occurrence).

Two ways to choose the words:

- a part-of-speech **tagger** (:func:`spacy_tagger`, an optional extra): every noun of the caption; the concept
  a noun counts for is its lower-case lemma ("dogs" -> "dog");
- a **concept list** (the default when no tagger is installed): ``["dog", "cat"]`` or ``{"dog": ["dog",
  "puppy"]}`` (name -> words that count for it); a word matches as a whole word, case-insensitively, plural
  "s"/"es" endings included (:func:`neuronscope.measure.metrics.compile_concept_pattern`).

The tagger: spaCy with an English pipeline. spaCy itself installs from PyPI (``pip install spacy``); its
English pipelines are not published on PyPI by spaCy's authors, so install one with
``python -m spacy download en_core_web_sm`` (this fetches it from spaCy's release page) or point
:func:`spacy_tagger` at a pipeline folder you have. Any callable ``text -> list[TaggedWord]`` works as a
tagger too.

Mapping words to tokens: the caption text is decoded token by token (``decode(ids[:k])``), so each generated
step owns a span of characters; a word's target step is the step whose span holds the word's first character.

Example:
    >>> caption, targets = select_targets(tokenizer, generated_ids, concepts=["dog"])  # doctest: +SKIP
    >>> targets[0].concept, targets[0].step, tokenizer.decode([targets[0].token_id])  # doctest: +SKIP
    ('dog', 3, ' dog')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from neuronscope.errors import InputError
from neuronscope.measure.metrics import compile_concept_pattern

NOUN_TAGS: tuple[str, ...] = ("NOUN", "PROPN")
TAGGER_HINT = (
    "install the optional tagger: `pip install spacy` and an English pipeline (`python -m spacy download "
    "en_core_web_sm`), or pass concepts=[...] (the words to look for in the captions)"
)


class TaggerUnavailable(InputError):
    """No part-of-speech tagger is installed (the message says how to install one or what to pass instead)."""


@dataclass(frozen=True)
class TaggedWord:
    """One word of a text with its part of speech: characters ``[start, end)``, tag (universal POS), lemma."""

    start: int
    end: int
    text: str
    pos: str
    lemma: str


Tagger = Callable[[str], list[TaggedWord]]
ConceptSpec = Sequence[str] | Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class TargetWord:
    """A chosen word of a caption and the generated token that starts it.

    Attributes:
        concept: the concept it counts for (the lemma of a noun, or the name in the concept list).
        word: the word as written in the caption.
        step: the generated step whose token starts the word (token ``step`` was produced by the logits at
            ``prompt_len - 1 + step``).
        token_id: that token's id; ``token``: its text.
        char_start: where the word starts in the caption text.
    """

    concept: str
    word: str
    step: int
    token_id: int
    token: str
    char_start: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------- tagger


def spacy_tagger(pipeline: str | Any = "en_core_web_sm") -> Tagger:
    """A tagger backed by spaCy: ``pipeline`` is an installed pipeline name, a folder, or a loaded ``Language``.

    Raises:
        TaggerUnavailable: spaCy or the pipeline is not installed, or the pipeline has no tagger.

    Example:
        >>> tagger = spacy_tagger()  # doctest: +SKIP
        >>> [w.text for w in tagger("a red dog on grass") if w.pos == "NOUN"]  # doctest: +SKIP
        ['dog', 'grass']
    """
    if isinstance(pipeline, str):
        try:
            import spacy
        except ImportError:
            raise TaggerUnavailable(f"spaCy is not installed: {TAGGER_HINT}") from None
        try:
            nlp = spacy.load(pipeline, disable=["ner", "parser"])
        except OSError:
            raise TaggerUnavailable(f"spaCy pipeline {pipeline!r} is not installed: {TAGGER_HINT}") from None
    else:
        nlp = pipeline
    if not any(name in getattr(nlp, "pipe_names", ()) for name in ("tagger", "morphologizer", "attribute_ruler")):
        raise TaggerUnavailable(f"the spaCy pipeline has no part-of-speech tagger: {TAGGER_HINT}")

    def tag(text: str) -> list[TaggedWord]:
        return [TaggedWord(t.idx, t.idx + len(t.text), t.text, t.pos_, (t.lemma_ or t.text).lower())
                for t in nlp(text)]

    return tag


def default_tagger() -> Tagger | None:
    """spaCy's ``en_core_web_sm`` if it is installed, else None (callers then need a concept list)."""
    try:
        return spacy_tagger()
    except TaggerUnavailable:
        return None


# ---------------------------------------------------------------------------------------------------- tokens


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def caption_token_spans(
    processor: Any, token_ids: Sequence[int]
) -> tuple[str, list[tuple[int, int]]]:
    """Decode generated tokens and find the characters each one adds.

    Args:
        processor: a tokenizer or a processor with one.
        token_ids: the generated tokens of one row, stopping tokens (end of sequence, padding) already cut.

    Returns:
        ``(text, spans)``: the decoded caption (special tokens skipped) and, per token, ``(start, end)`` in
        ``text``. A token that adds nothing (a special token) has an empty span.

    Raises:
        InputError: the tokenizer's decoding is not prefix-stable (decode of a prefix is not a prefix of the
            decode of the whole), so characters cannot be assigned to tokens.
    """
    tokenizer = _tokenizer(processor)
    ids = [int(t) for t in token_ids]
    texts = [tokenizer.decode(ids[:k], skip_special_tokens=True) for k in range(len(ids) + 1)]
    spans = []
    for k in range(len(ids)):
        if not texts[k + 1].startswith(texts[k]):
            raise InputError(
                f"decoding the caption token by token is not prefix-stable at token {k} ({texts[k]!r} -> "
                f"{texts[k + 1]!r}); give concepts that are whole tokens, or report this tokenizer to neuronscope"
            )
        spans.append((len(texts[k]), len(texts[k + 1])))
    return texts[-1], spans


def step_of_char(spans: Sequence[tuple[int, int]], char: int) -> int | None:
    """The step whose token span holds character ``char`` (None if no token does)."""
    for step, (start, end) in enumerate(spans):
        if start <= char < end:
            return step
    return None


def _concept_words(concepts: ConceptSpec) -> dict[str, list[str]]:
    if isinstance(concepts, str):
        concepts = [concepts]
    if isinstance(concepts, Mapping):
        out = {str(name): [str(w) for w in (words if not isinstance(words, str) else [words])] or [str(name)]
               for name, words in concepts.items()}
    else:
        out = {str(word): [str(word)] for word in concepts}
    if not out:
        raise InputError("the concept list is empty: give at least one word to look for")
    return out


def noun_words(text: str, tagger: Tagger) -> list[tuple[str, str, int]]:
    """``(concept, word, char_start)`` for each noun of ``text`` (first occurrence of each concept)."""
    seen: set[str] = set()
    out = []
    for word in tagger(text):
        if word.pos not in NOUN_TAGS:
            continue
        concept = (word.lemma or word.text).lower().strip()
        if concept and concept not in seen:
            seen.add(concept)
            out.append((concept, word.text, word.start))
    return out


def concept_words(text: str, concepts: ConceptSpec) -> list[tuple[str, str, int]]:
    """``(concept, word, char_start)`` for each concept mentioned in ``text`` (its first mention), in text order."""
    found = []
    for name, words in _concept_words(concepts).items():
        match = compile_concept_pattern(words).search(text)
        if match is not None:
            found.append((name, match.group(0), match.start()))
    return sorted(found, key=lambda item: item[2])


def select_targets(
    processor: Any,
    token_ids: Sequence[int],
    *,
    concepts: ConceptSpec | None = None,
    tagger: Tagger | None = None,
) -> tuple[str, list[TargetWord]]:
    """The target words of one generated caption and the step of each one's first sub-token.

    Args:
        processor: tokenizer or processor.
        token_ids: the row's generated tokens, stopping tokens cut.
        concepts: words to look for (list, or name -> synonyms); used when given.
        tagger: a part-of-speech tagger for nouns; used when ``concepts`` is None.

    Returns:
        ``(caption, targets)`` in caption order. Words whose first character falls in no token are dropped.

    Raises:
        TaggerUnavailable: neither ``concepts`` nor ``tagger`` given.
    """
    text, spans = caption_token_spans(processor, token_ids)
    if concepts is not None:
        words = concept_words(text, concepts)
    elif tagger is not None:
        words = noun_words(text, tagger)
    else:
        raise TaggerUnavailable(f"no target words: no part-of-speech tagger is installed; {TAGGER_HINT}")
    tokenizer = _tokenizer(processor)
    targets = []
    for concept, word, start in words:
        step = step_of_char(spans, start)
        if step is None:
            continue
        token_id = int(token_ids[step])
        targets.append(TargetWord(concept, word, step, token_id, tokenizer.decode([token_id]), start))
    return text, targets


def resolve_tagger(concepts: ConceptSpec | None, tagger: Tagger | str | None) -> Tagger | None:
    """The tagger to use: None with a concept list; the given one; a spaCy pipeline by name; else the default.

    Raises:
        TaggerUnavailable: no concepts and no tagger can be found (the message says how to install one).
    """
    if concepts is not None:
        return None
    if callable(tagger):
        return tagger
    if isinstance(tagger, str):
        return spacy_tagger(tagger)
    found = default_tagger()
    if found is None:
        raise TaggerUnavailable(f"cannot pick the nouns of the captions: no tagger installed; {TAGGER_HINT}")
    return found
