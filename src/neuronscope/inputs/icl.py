"""In-context-learning (ICL) classification prompts: labelled data, k-shot prompts, label-token positions.

A prompt is ``k`` demonstrations rendered with a template and joined, then the query without its label::

    Review: it 's a charming journey .\\nSentiment: foo\\n\\nReview: bleak and desperate\\nSentiment: bar\\n\\n
    Review: <query>\\nSentiment:

The model's answer is read at the last position: the first sub-token of each label word (``" foo"``) is that
class's token. Labels are natural words (``"negative"`` / ``"positive"``) or semantically unrelated tokens
(``"foo"`` / ``"bar"``, Yu & Ananiadou 2024); label mixes may be balanced or not (``counts``) and demonstrations
may come in any order (:data:`ORDERS` or an explicit permutation). :func:`encode_icl` records, per demonstration,
the position of its label token, the token span of its text, and the query's span, in the left-padded batch.

Readers: :func:`read_labelled_tsv` (any ``text<TAB>label`` file), :func:`read_icl_dataset` for the two files of
``data/icl/`` (``sst2_872.tsv`` with a header ``sentence<TAB>label``, ``agnews_test_7600.tsv`` without one).

Example:
    >>> data = read_icl_dataset("../shared/data/icl", "sst2")
    >>> prompts = sample_prompts(data, n_prompts=8, counts=[2, 2], label_words=["foo", "bar"], seed=0)
    >>> icl = encode_icl(tokenizer, prompts)
    >>> icl.label_positions.shape, icl.class_token_ids            # [8, 4], the ids of " foo" and " bar"
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from neuronscope.errors import InputError
from neuronscope.inputs.batch import Batch, encode_prompts

ORDERS = ("random", "sorted", "reverse_sorted", "majority_last", "majority_first", "given")
UNRELATED_WORDS = ("foo", "bar", "baz", "qux")


# -- data --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelledDataset:
    """Texts with class labels. ``classes`` fixes the class order; ``labels[i]`` indexes it; ``natural_words``
    are the label words a prompt uses by default (one per class)."""

    name: str
    texts: list[str]
    labels: list[int]
    classes: list[str]
    natural_words: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def indices_of(self, label: int) -> list[int]:
        return [i for i, value in enumerate(self.labels) if value == label]


_KNOWN = {  # file, header, class order, natural label words
    "sst2": ("sst2_872.tsv", True, ["0", "1"], ["negative", "positive"]),
    "agnews": ("agnews_test_7600.tsv", False, ["World", "Sports", "Business", "Sci/Tech"],
               ["World", "Sports", "Business", "Science"]),
}


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\\", " ")).strip()


def read_labelled_tsv(path: str | Path, *, header: bool, classes: Sequence[str] | None = None,
                      natural_words: Sequence[str] | None = None, name: str | None = None) -> LabelledDataset:
    """Read ``text<TAB>label`` lines (backslashes and runs of white space become one space).

    Args:
        header: the first line names the columns and is skipped.
        classes: the class order (default: labels in order of first appearance); other labels are an error.
        natural_words: label words for prompts, one per class (default: the class names).

    Raises:
        InputError: listing every bad line (``<file>: line <n>: <what>; <what to do>``).

    Example:
        >>> data = read_labelled_tsv("sst2_872.tsv", header=True, classes=["0", "1"])
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; pass the TSV of (text, label) lines")
    lines = path.read_text(encoding="utf-8").splitlines()
    known = list(classes) if classes is not None else []
    texts, labels, problems = [], [], []
    for number, line in enumerate(lines[1:] if header else lines, start=2 if header else 1):
        if not line.strip():
            continue
        parts = line.rsplit("\t", 1)
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            problems.append(f"{path}: line {number}: expected 'text<TAB>label'; fix or remove the line")
            continue
        label = parts[1].strip()
        if label not in known:
            if classes is not None:
                problems.append(f"{path}: line {number}: field 'label': unknown class {label!r}; known: {known}")
                continue
            known.append(label)
        texts.append(_clean(parts[0]))
        labels.append(known.index(label))
    if problems:
        raise InputError("\n".join(problems[:20]) + (f"\n... and {len(problems) - 20} more" if len(problems) > 20
                                                      else ""))
    if not texts:
        raise InputError(f"{path}: no (text, label) lines found")
    words = list(natural_words) if natural_words is not None else list(known)
    if len(words) != len(known):
        raise InputError(f"{path}: {len(known)} classes but {len(words)} natural label words; give one per class")
    return LabelledDataset(name or path.stem, texts, labels, known, words)


def read_icl_dataset(folder: str | Path, name: str) -> LabelledDataset:
    """One of the ICL data sets of ``data/icl/`` by name: ``"sst2"`` (872 sentences, negative/positive) or
    ``"agnews"`` (7,600 news items, World/Sports/Business/Sci-Tech).

    Example:
        >>> read_icl_dataset("../shared/data/icl", "agnews").classes
        ['World', 'Sports', 'Business', 'Sci/Tech']
    """
    if name not in _KNOWN:
        raise InputError(f"unknown ICL data set {name!r}: use one of {', '.join(_KNOWN)}, or read_labelled_tsv")
    file, header, classes, words = _KNOWN[name]
    return read_labelled_tsv(Path(folder) / file, header=header, classes=classes, natural_words=words, name=name)


def label_words_for(dataset: LabelledDataset, kind: str = "natural") -> list[str]:
    """``"natural"``: the data set's label words; ``"unrelated"``: ``foo, bar, baz, qux`` (as many as classes)."""
    if kind == "natural":
        return list(dataset.natural_words)
    if kind == "unrelated":
        if len(dataset.classes) > len(UNRELATED_WORDS):
            raise InputError(f"only {len(UNRELATED_WORDS)} unrelated label words; pass label_words yourself")
        return list(UNRELATED_WORDS[:len(dataset.classes)])
    raise InputError(f"label kind must be 'natural' or 'unrelated', not {kind!r}")


# -- prompts -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ICLTemplate:
    """How a demonstration and the query are written; ``{text}`` and ``{label}`` are filled in."""

    demonstration: str = "Review: {text}\nSentiment: {label}"
    query: str = "Review: {text}\nSentiment:"
    separator: str = "\n\n"
    instruction: str = ""

    def __post_init__(self) -> None:
        if "{text}" not in self.demonstration or "{label}" not in self.demonstration or "{text}" not in self.query:
            raise InputError("an ICL template needs {text} and {label} in the demonstration and {text} in the query")


TOPIC_TEMPLATE = ICLTemplate("Article: {text}\nTopic: {label}", "Article: {text}\nTopic:")


@dataclass(frozen=True)
class ICLPrompt:
    """One k-shot prompt with character spans of every piece (``[start, stop)`` in ``text``)."""

    text: str
    demo_texts: list[str]
    demo_classes: list[int]
    query: str
    query_class: int
    label_words: list[str]
    label_spans: list[tuple[int, int]]
    text_spans: list[tuple[int, int]]
    query_span: tuple[int, int]


def _fill(template: str, text: str, label: str | None, offset: int) -> tuple[str, tuple[int, int], tuple | None]:
    """Render one template piece; returns it with the char spans of its text and label (absolute)."""
    head, tail = template.split("{text}", 1)
    text_span = (offset + len(head), offset + len(head) + len(text))
    if label is None:
        return head + text + tail, text_span, None
    before, after = tail.split("{label}", 1)
    start = text_span[1] + len(before)
    return head + text + before + label + after, text_span, (start, start + len(label))


def build_prompt(demo_texts: Sequence[str], demo_classes: Sequence[int], query: str, query_class: int,
                 label_words: Sequence[str], template: ICLTemplate = ICLTemplate()) -> ICLPrompt:
    """Render demonstrations (in the given order) and the query into one prompt, recording every span.

    Example:
        >>> p = build_prompt(["good", "bad"], [1, 0], "fine", 1, ["foo", "bar"])
        >>> p.text[slice(*p.label_spans[0])]
        'bar'
    """
    if len(demo_texts) != len(demo_classes):
        raise InputError(f"{len(demo_texts)} demonstration texts but {len(demo_classes)} classes")
    if any(not 0 <= c < len(label_words) for c in [*demo_classes, query_class]):
        raise InputError(f"classes must index the {len(label_words)} label words")
    pieces, label_spans, text_spans = [template.instruction], [], []
    offset = len(template.instruction)
    for text, label in zip(demo_texts, demo_classes, strict=True):
        piece, text_span, label_span = _fill(template.demonstration, text, label_words[label], offset)
        pieces.append(piece + template.separator)
        offset += len(pieces[-1])
        text_spans.append(text_span)
        label_spans.append(label_span)
    piece, query_span, _ = _fill(template.query, query, None, offset)
    pieces.append(piece)
    return ICLPrompt("".join(pieces), list(demo_texts), list(demo_classes), query, query_class, list(label_words),
                     label_spans, text_spans, query_span)


def demonstration_order(classes: Sequence[int], order: str | Sequence[int], rng: random.Random) -> list[int]:
    """A permutation of the demonstrations ``classes [k]``.

    Orders: ``"random"``; ``"sorted"`` (class 0's block first, the last class's block last); ``"reverse_sorted"``;
    ``"majority_last"`` / ``"majority_first"`` (the most frequent class's block at the end / start, the rest
    shuffled); ``"given"`` (as sampled); or an explicit permutation.
    """
    k = len(classes)
    if not isinstance(order, str):
        permutation = [int(i) for i in order]
        if sorted(permutation) != list(range(k)):
            raise InputError(f"an explicit order must be a permutation of 0..{k - 1}, got {permutation}")
        return permutation
    if order not in ORDERS:
        raise InputError(f"unknown demonstration order {order!r}: use one of {', '.join(ORDERS)} or a permutation")
    index = list(range(k))
    rng.shuffle(index)  # shuffled within blocks too
    if order == "random":
        return index
    if order == "given":
        return list(range(k))
    if order in ("sorted", "reverse_sorted"):
        return sorted(index, key=lambda i: classes[i], reverse=order == "reverse_sorted")
    majority = max(set(classes), key=lambda c: (list(classes).count(c), -c))
    rest = [i for i in index if classes[i] != majority]
    block = [i for i in index if classes[i] == majority]
    return rest + block if order == "majority_last" else block + rest


def reorder(prompt: ICLPrompt, order: str | Sequence[int], template: ICLTemplate = ICLTemplate(),
            seed: int = 0) -> ICLPrompt:
    """The same demonstrations and query in another order (for recency: ``"sorted"`` vs ``"reverse_sorted"``)."""
    permutation = demonstration_order(prompt.demo_classes, order, random.Random(seed))
    return build_prompt([prompt.demo_texts[i] for i in permutation], [prompt.demo_classes[i] for i in permutation],
                        prompt.query, prompt.query_class, prompt.label_words, template)


def sample_prompts(dataset: LabelledDataset, *, n_prompts: int, counts: Sequence[int],
                   label_words: Sequence[str] | None = None, order: str | Sequence[int] = "random",
                   template: ICLTemplate = ICLTemplate(), seed: int = 0,
                   query_indices: Sequence[int] | None = None, exclude: Sequence[int] = ()) -> list[ICLPrompt]:
    """``n_prompts`` prompts with ``counts[c]`` demonstrations of class ``c`` each.

    Queries are balanced over classes (cycling through them) unless ``query_indices`` are given; demonstrations
    are drawn without replacement from the other items (never the query, never ``exclude``). Queries depend only
    on ``seed`` (not on ``counts`` or ``order``), so prompt sets sampled with the same seed share their queries.

    Example:
        >>> majority_a = sample_prompts(data, n_prompts=32, counts=[6, 2], seed=3)
        >>> majority_b = sample_prompts(data, n_prompts=32, counts=[2, 6], seed=3)    # same queries
    """
    n_classes = len(dataset.classes)
    if len(counts) != n_classes or any(c < 0 for c in counts):
        raise InputError(f"counts must give a non-negative number of demonstrations for each of {n_classes} classes")
    words = list(label_words) if label_words is not None else list(dataset.natural_words)
    banned = set(exclude)
    query_rng, demo_rng = random.Random(f"{seed}-queries"), random.Random(f"{seed}-demos")
    if query_indices is None:
        pools = [[i for i in dataset.indices_of(c) if i not in banned] for c in range(n_classes)]
        for pool in pools:
            query_rng.shuffle(pool)
        if any(len(pool) < -(-n_prompts // n_classes) for pool in pools):
            raise InputError(f"not enough items per class for {n_prompts} balanced queries")
        query_indices = [pools[i % n_classes][i // n_classes] for i in range(n_prompts)]
    prompts = []
    for query in list(query_indices)[:n_prompts]:
        chosen: list[int] = []
        for label, count in enumerate(counts):
            pool = [i for i in dataset.indices_of(label) if i != query and i not in banned]
            if len(pool) < count:
                raise InputError(f"class {dataset.classes[label]!r} has only {len(pool)} items for {count} demos")
            chosen += demo_rng.sample(pool, count)
        classes = [dataset.labels[i] for i in chosen]
        permutation = demonstration_order(classes, order, demo_rng)
        prompts.append(build_prompt([dataset.texts[chosen[i]] for i in permutation],
                                    [classes[i] for i in permutation], dataset.texts[query],
                                    dataset.labels[query], words, template))
    return prompts


# -- encoding ----------------------------------------------------------------------------------------------------
@dataclass
class ICLBatch:
    """Encoded prompts (left-padded) with every demonstration's token positions.

    Attributes:
        batch: the model inputs.
        label_positions: ``[B, k]`` padded position of each demonstration's label token.
        text_spans: ``[B, k, 2]`` padded token ``[start, stop)`` of each demonstration's text.
        query_spans: ``[B, 2]`` the query text's tokens.
        demo_classes: ``[B, k]``; ``query_classes``: ``[B]``.
        class_token_ids: ``[C]`` the token each class is answered with (first sub-token of its label word).
        prompts: the :class:`ICLPrompt` of each row.
    """

    batch: Batch
    label_positions: torch.Tensor
    text_spans: torch.Tensor
    query_spans: torch.Tensor
    demo_classes: torch.Tensor
    query_classes: torch.Tensor
    class_token_ids: torch.Tensor
    prompts: list[ICLPrompt] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.batch)

    @property
    def n_classes(self) -> int:
        return int(self.class_token_ids.numel())

    @property
    def shots(self) -> int:
        return int(self.label_positions.shape[1])

    def select(self, rows: Sequence[int] | torch.Tensor) -> ICLBatch:
        """The sub-batch of ``rows`` (same padded width, so positions stay valid)."""
        index = torch.as_tensor(rows, dtype=torch.long)
        return replace(self, batch=self.batch.select(index), label_positions=self.label_positions[index],
                       text_spans=self.text_spans[index], query_spans=self.query_spans[index],
                       demo_classes=self.demo_classes[index], query_classes=self.query_classes[index],
                       prompts=[self.prompts[i] for i in index.tolist()])


def _tokens_of(offsets: list[tuple[int, int]], span: tuple[int, int]) -> list[int]:
    """Indices of the tokens whose character span overlaps ``span`` (zero-width tokens never do)."""
    start, stop = span
    return [i for i, (a, b) in enumerate(offsets) if b > a and a < stop and b > start]


def _offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("ICL prompts need a fast tokenizer (character offsets); load the model's tokenizer.json")
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    return list(encoded["input_ids"]), [tuple(pair) for pair in encoded["offset_mapping"]]


def encode_icl(tokenizer: Any, prompts: Sequence[ICLPrompt], model: Any = None) -> ICLBatch:
    """Tokenise prompts (raw text, special tokens as the tokenizer adds them) and record every position.

    Raises:
        InputError: prompts with different numbers of demonstrations or label words; label words whose first
            sub-tokens coincide; a label whose first token is merged with the text around it.
    """
    prompts = list(prompts)
    if not prompts:
        raise InputError("no ICL prompts given")
    shots, words = len(prompts[0].demo_classes), prompts[0].label_words
    if any(len(p.demo_classes) != shots or p.label_words != words for p in prompts):
        raise InputError("all prompts of one ICL batch need the same number of demonstrations and label words")
    batch = encode_prompts(tokenizer, [p.text for p in prompts], model=model)
    class_ids: list[int | None] = [None] * len(words)
    label_pos, text_spans, query_spans = [], [], []
    for row, prompt in enumerate(prompts):
        ids, offsets = _offsets(tokenizer, prompt.text)
        if len(ids) != int(batch.lengths[row]) or ids != batch.input_ids[row, batch.seq_len - len(ids):].tolist():
            raise InputError(f"prompt {row}: tokenising with offsets gave other tokens than the batch")
        row_labels, row_texts = [], []
        for span, text_span, label in zip(prompt.label_spans, prompt.text_spans, prompt.demo_classes, strict=True):
            first = _tokens_of(offsets, span)[0]
            a, b = offsets[first]
            if a < span[0] - 1 or (a == span[0] - 1 and prompt.text[a] not in " \u2581"):
                raise InputError(f"prompt {row}: label {words[label]!r} shares a token with the text before it; "
                                 "put a space before {label} in the template")
            if class_ids[label] is None:
                class_ids[label] = ids[first]
            elif class_ids[label] != ids[first]:
                raise InputError(f"label {words[label]!r} is tokenised differently in different places")
            tokens = _tokens_of(offsets, text_span)
            row_labels.append(first)
            row_texts.append((tokens[0], tokens[-1] + 1))
        tokens = _tokens_of(offsets, prompt.query_span)
        query_spans.append((tokens[0], tokens[-1] + 1))
        label_pos.append(row_labels)
        text_spans.append(row_texts)
    for label, token in enumerate(class_ids):
        if token is None:  # no demonstration of this class anywhere: tokenise the label as it would appear
            class_ids[label] = _tokens_of_label(tokenizer, words[label])
    if len(set(class_ids)) != len(class_ids):
        raise InputError(f"label words {words} share their first token; choose labels that start differently")
    pad = batch.pad_lengths
    return ICLBatch(batch, torch.tensor(label_pos) + pad[:, None], torch.tensor(text_spans) + pad[:, None, None],
                    torch.tensor(query_spans) + pad[:, None], torch.tensor([p.demo_classes for p in prompts]),
                    torch.tensor([p.query_class for p in prompts]), torch.tensor(class_ids), prompts)


def _tokens_of_label(tokenizer: Any, word: str) -> int:
    text = f"x: {word}"
    ids, offsets = _offsets(tokenizer, text)
    return ids[_tokens_of(offsets, (3, 3 + len(word)))[0]]
