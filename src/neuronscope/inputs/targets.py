"""Targets of an attribution: which token, scored at which position, for each example of a batch.

Kinds of target:
- a token id (``int``), scored at the last prompt position;
- a word (``str``): its first sub-token, with or without the leading-space variant (``leading_space``): QRNCA
  attributes to the bare letter ``"A"``, while a word inside a sentence is usually ``" A"``;
- ``"prediction"``: the model's own top-1 token at the last position;
- every token of a generated continuation (:func:`continuation_targets`), each at the position that produced it.

Example:
    >>> targets = word_targets(tokenizer, batch, ["Paris", "Rome"])        # one word per row
    >>> targets.token_ids.shape, targets.positions.shape                    # [batch, 1], [batch, 1]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from neuronscope.errors import InputError, PositionError, TargetError
from neuronscope.inputs.batch import Batch, Generation


@dataclass
class TargetSet:
    """Per example, ``n`` target tokens and the positions whose logits should produce them.

    Attributes:
        token_ids: ``[batch, n]`` target token ids.
        positions: ``[batch, n]`` positions in the (left-padded) batch.
        valid: ``[batch, n]`` False for padding where rows have fewer targets.
        labels: ``[batch][n]`` readable strings of the targets.
    """

    token_ids: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    labels: list[list[str]] = field(default_factory=list)

    @property
    def n_targets(self) -> int:
        return int(self.token_ids.shape[1])

    def check(self, seq_len: int, vocab_size: int) -> None:
        """Raise clear errors for positions outside the sequence or ids outside the vocabulary."""
        bad = self.valid & ((self.positions < 0) | (self.positions >= seq_len))
        if bool(bad.any()):
            row, col = (int(i) for i in bad.nonzero()[0])
            raise PositionError(
                f"target position {int(self.positions[row, col])} (row {row}) is outside the sequence of length "
                f"{seq_len}"
            )
        bad = self.valid & ((self.token_ids < 0) | (self.token_ids >= vocab_size))
        if bool(bad.any()):
            row, col = (int(i) for i in bad.nonzero()[0])
            raise InputError(f"target token id {int(self.token_ids[row, col])} is outside the vocabulary ({vocab_size})")

    def describe(self) -> dict[str, Any]:
        return {"token_ids": self.token_ids.tolist(), "positions": self.positions.tolist(), "labels": self.labels}


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


#: The text a word is tokenised after, so that its pieces are the ones a model emits after some text (a word at
#: the start of a string gets a sentencepiece dummy prefix it never has inside a sentence).
ANCHOR = "Answer:"
_MARKERS = ("▁", "Ġ", " ", "Ċ")
_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def word_pieces(processor: Any, word: str, leading_space: bool = True) -> list[int]:
    """The token ids a model emits for ``word`` after some text (``" word"`` when ``leading_space``).

    Tokenised after :data:`ANCHOR` and cut where the anchor's tokens end, so the pieces are the ones that follow
    text (no sentencepiece dummy prefix, no special tokens).

    Example:
        >>> word_pieces(smollm2_tokenizer, "0")      # doctest: +SKIP
        [32]
    """
    tokenizer = _tokenizer(processor)
    text = (" " + word.lstrip()) if leading_space else word
    anchor = tokenizer(ANCHOR, add_special_tokens=False)["input_ids"]
    ids = tokenizer(ANCHOR + text, add_special_tokens=False)["input_ids"]
    if ids[:len(anchor)] == anchor and len(ids) > len(anchor):
        return [int(i) for i in ids[len(anchor):]]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    while len(ids) > 1 and tokenizer.convert_ids_to_tokens(ids[0]) in _MARKERS:
        ids = ids[1:]  # a dummy prefix the tokenizer adds at the start of a string
    return [int(i) for i in ids]


def word_token(processor: Any, word: str, leading_space: bool = True, first_piece: bool = False) -> int:
    """The one token a model emits for ``word`` (``" word"`` when ``leading_space``); see :func:`word_pieces`.

    Args:
        word: the word.
        leading_space: the word follows a space (``" Paris"``); False for a bare token (the letter ``"A"`` right
            after ``"Answer:"``).
        first_piece: a word of several pieces is scored by its first piece (default False: refused).

    Raises:
        TargetError: the word encodes to nothing, to the unknown token or byte pieces (not in the vocabulary),
            to a bare space token first (``" 0"`` -> ``'Ġ', '0'``), or to several pieces without ``first_piece``.
    """
    tokenizer = _tokenizer(processor)
    pieces = word_pieces(tokenizer, word, leading_space)
    shown = (" " + word.lstrip()) if leading_space else word
    if not pieces:
        raise TargetError(f"target word {word!r} encodes to no token; give a word or a token id (id:N)")
    names = tokenizer.convert_ids_to_tokens(pieces)
    unk = getattr(tokenizer, "unk_token_id", None)
    if (unk is not None and unk in pieces and word.strip() != tokenizer.unk_token) or any(
            _BYTE_PIECE.match(str(name)) for name in names):
        raise TargetError(f"target word {word!r} is not in the vocabulary (it encodes to the unknown token or to "
                          "raw bytes): check its spelling or give a token id (id:N)")
    if str(names[0]) in _MARKERS:
        hint = "--no-leading-space" if leading_space else "a token id"
        raise TargetError(f"target {shown!r} is emitted as a bare space token {names[0]!r} followed by {names[1:]}: its "
                          f"first token says nothing about the word; score it without the space ({hint}) or give "
                          "a token id (id:N)")
    if len(pieces) > 1 and not first_piece:
        raise TargetError(f"target word {word!r} is {len(pieces)} tokens ({', '.join(map(repr, names))}): only its "
                          f"first piece {names[0]!r} would be scored; pass --first-piece (first_piece=True) to "
                          "score it, or give a word of one token or a token id (id:N)")
    return int(pieces[0])


def _stack(rows: list[list[tuple[int, int, str]]]) -> TargetSet:
    width = max(1, max(len(row) for row in rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    labels: list[list[str]] = []
    for r, row in enumerate(rows):
        for c, (token, position, _) in enumerate(row):
            ids[r, c], positions[r, c], valid[r, c] = token, position, True
        labels.append([label for _, _, label in row])
    return TargetSet(ids, positions, valid, labels)


def token_targets(batch: Batch, token_ids: int | Sequence[int] | torch.Tensor, processor: Any = None) -> TargetSet:
    """One target token per row (an int for all rows, or one per row), at the last prompt position."""
    if isinstance(token_ids, int):
        token_ids = [token_ids] * len(batch)
    token_ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(len(batch), -1)
    last = batch.seq_len - 1
    tokenizer = _tokenizer(processor) if processor is not None else None
    rows = [[(int(t), last, tokenizer.decode([int(t)]) if tokenizer else str(int(t))) for t in row]
            for row in token_ids]
    return _stack(rows)


def word_targets(
    processor: Any, batch: Batch, words: str | Sequence[str] | Sequence[Sequence[str]], leading_space: bool = True,
    first_piece: bool = False,
) -> TargetSet:
    """Words as targets at the last prompt position: one word for all rows, one per row, or a list per row.

    Each word must be one token (see :func:`word_token`); with ``first_piece`` a longer word is scored by its
    first piece, and its label says so (``"girl" -> '▁g'``).
    """
    if isinstance(words, str):
        words = [[words]] * len(batch)
    elif all(isinstance(word, str) for word in words):
        if len(words) != len(batch):
            raise InputError(f"{len(words)} target words for {len(batch)} prompts: give one per prompt")
        words = [[word] for word in words]
    last = batch.seq_len - 1
    rows = [[(token, last, target_label(processor, word, token)) for word in row
             for token in [word_token(processor, word, leading_space, first_piece)]] for row in words]
    return _stack(rows)


def target_label(processor: Any, word: str, token: int) -> str:
    """The label of a word target: the word itself, or ``"word -> 'piece'"`` when only a piece of it is scored."""
    piece = _tokenizer(processor).decode([token])
    return word if piece.strip() == word.strip() else f"{word} -> {piece!r}"


@torch.no_grad()
def prediction_targets(model: nn.Module, batch: Batch, processor: Any = None) -> TargetSet:
    """The model's own top-1 token at the last position of each row."""
    logits = model(**batch.inputs).logits[:, -1]
    return token_targets(batch, logits.argmax(-1).cpu(), processor)


def continuation_targets(
    generation: Generation, processor: Any = None, select: Sequence[Sequence[int]] | None = None
) -> TargetSet:
    """Every generated token (or the steps listed per row in ``select``) at the position that produced it.

    Positions refer to ``generation.sequences``, which must be what the model is then run on.
    Pad / end-of-sequence tokens after a row finished are skipped.
    """
    tokenizer = _tokenizer(processor) if processor is not None else None
    stop = {tokenizer.pad_token_id, tokenizer.eos_token_id} - {None} if tokenizer is not None else set()
    positions = generation.producing_positions()
    rows = []
    for r, tokens in enumerate(generation.tokens.tolist()):
        steps = range(len(tokens)) if select is None else select[r]
        row = []
        for step in steps:
            if tokens[step] in stop:
                if select is None:
                    break
                continue
            label = tokenizer.decode([tokens[step]]) if tokenizer else str(tokens[step])
            row.append((tokens[step], int(positions[step]), label))
        rows.append(row)
    return _stack(rows)


# ---------------------------------------------------------------------------------------------------- target specs
#: The target spec meaning "the model's own top-1 next token".
PREDICTION = "prediction"


class TargetSpec(NamedTuple):
    """A parsed target spec: ``("prediction", None)``, ``("id", 17)`` or ``("word", " Paris")``."""

    kind: str
    value: Any


def parse_target(spec: str) -> TargetSpec:
    """``"prediction"`` -> ``("prediction", None)``; ``"id:5"`` -> ``("id", 5)``; ``"word:x"`` or ``"x"`` -> ``("word", x)``.

    Example:
        >>> parse_target("id:17"), parse_target("prediction"), parse_target(" Paris")
        (TargetSpec(kind='id', value=17), TargetSpec(kind='prediction', value=None), TargetSpec(kind='word', value=' Paris'))
    """
    text = str(spec)
    if text.strip().lower() == PREDICTION:
        return TargetSpec(PREDICTION, None)
    if text.startswith("id:"):
        try:
            return TargetSpec("id", int(text[3:]))
        except ValueError:
            raise TargetError(f"target {text!r}: 'id:' must be followed by a token id, e.g. id:123") from None
    if text.startswith("word:"):
        text = text[5:]
    if not text.strip():
        raise TargetError(f"target {spec!r} is empty; give a word, id:N or 'prediction'")
    return TargetSpec("word", text)


def resolve_target(processor: Any, spec: str, vocab_size: int, *, leading_space: bool = True,
                   first_piece: bool = False) -> int | None:
    """The token id of a target spec (None for ``prediction``); see :func:`word_token` for words."""
    kind, value = parse_target(spec)
    if kind == PREDICTION:
        return None
    if kind == "id":
        if not 0 <= value < vocab_size:
            raise TargetError(f"token id {value} is outside the vocabulary (0..{vocab_size - 1})")
        return int(value)
    return word_token(processor, value, leading_space, first_piece)


def resolve_targets(processor: Any, records: Sequence[Any], vocab_size: int, *, leading_space: bool = True,
                    first_piece: bool = False) -> list[int | None]:
    """Token ids of the records' target specs (``record.id``, ``record.target``), checked up front.

    Raises:
        TargetError: one line per record whose target cannot be resolved, naming the record.
    """
    out: list[int | None] = []
    problems = []
    for record in records:
        try:
            out.append(resolve_target(processor, record.target or PREDICTION, vocab_size,
                                      leading_space=leading_space, first_piece=first_piece))
        except InputError as error:
            problems.append(f"prompt {record.id}: target {record.target!r}: {error}")
            out.append(None)
    if problems:
        raise TargetError("\n".join(problems))
    return out


@torch.no_grad()
def last_position_targets(model: nn.Module, processor: Any, batch: Batch, token_ids: Sequence[int | None],
                          labels: Sequence[str]) -> TargetSet:
    """One target per row at the last position; rows whose token is ``None`` get the model's own prediction
    (labelled with the predicted token's text)."""
    ids = list(token_ids)
    if any(token is None for token in ids):
        predicted = model(**batch.inputs).logits[:, -1].argmax(-1).cpu().tolist()
        ids = [predicted[row] if token is None else token for row, token in enumerate(ids)]
    tokenizer = _tokenizer(processor)
    n = len(ids)
    names = [[tokenizer.decode([token]) if str(label).strip().lower() == PREDICTION else label]
             for token, label in zip(ids, labels, strict=True)]
    return TargetSet(torch.tensor(ids, dtype=torch.long).reshape(n, 1),
                     torch.full((n, 1), batch.seq_len - 1, dtype=torch.long), torch.ones(n, 1, dtype=torch.bool),
                     names)


def first_token(processor: Any, text: str) -> int:
    """The first token of ``text`` exactly as written (``" Paris"`` keeps its leading space): first-piece scoring,
    as the papers score an answer by its first token."""
    ids = _tokenizer(processor)(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise TargetError(f"{text!r} encodes to no token")
    return int(ids[0])
