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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuronscope.errors import InputError, PositionError
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


def word_token(processor: Any, word: str, leading_space: bool = True) -> int:
    """The first sub-token of ``word`` (``" word"`` when ``leading_space``). Raises :class:`InputError` when the
    tokenizer maps it to the unknown token."""
    tokenizer = _tokenizer(processor)
    text = (" " + word.lstrip()) if leading_space else word
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"target word {word!r} encodes to no token")
    # Tokenizers that add a prefix-space marker as its own token (sentencepiece "▁") -> skip a lone marker.
    first = ids[0]
    if len(ids) > 1 and tokenizer.convert_ids_to_tokens(first) in ("▁", "Ġ", " "):
        first = ids[1]
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and first == unk and word.strip() != tokenizer.unk_token:
        raise InputError(
            f"target word {word!r} is not in the vocabulary (it maps to the unknown token): check its spelling "
            "or use a token id"
        )
    return int(first)


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
    processor: Any, batch: Batch, words: str | Sequence[str] | Sequence[Sequence[str]], leading_space: bool = True
) -> TargetSet:
    """Words as targets at the last prompt position: one word for all rows, one per row, or a list per row."""
    if isinstance(words, str):
        words = [[words]] * len(batch)
    elif all(isinstance(word, str) for word in words):
        if len(words) != len(batch):
            raise InputError(f"{len(words)} target words for {len(batch)} prompts: give one per prompt")
        words = [[word] for word in words]
    last = batch.seq_len - 1
    rows = [[(word_token(processor, word, leading_space), last, word) for word in row] for row in words]
    return _stack(rows)


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
