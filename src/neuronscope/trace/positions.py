"""Which sequence positions a capture or an intervention touches, in each forward call.

A forward call sees ``T`` new positions after ``offset`` cached ones: ``offset = 0, T = prompt length`` for a plain
forward or the prefill of ``generate``; ``offset = prompt length + k, T = 1`` for generated step ``k``.

Position specs:
- ``"last"``: the last position of every call: the prompt's last position, then each generated step (the
  positions whose logits produce the next token). Batches must be left-padded.
- ``"all"``: every position of every call.  ``"prompt"``: every position of the first call only.
- ``"generated"``: every position of the calls after the first (the generated steps).
- explicit: an int, a list of ints (the same for every row), a LongTensor ``[batch]`` or ``[batch, k]`` or a list
  of per-row lists (ragged lists are allowed): absolute positions in the (left-padded) input; negative values count
  from the end of the prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from neuronscope.errors import PositionError
from neuronscope.models.devices import on_device

NAMED = ("last", "all", "prompt", "generated")
PositionSpec = str | int | Sequence[int] | Sequence[Sequence[int]] | torch.Tensor


@dataclass
class CallState:
    """What the running forward call looks like (set by a hook on the decoder)."""

    offset: int = 0
    seq_len: int = 0
    batch: int = 0
    prompt_len: int = 0
    calls: int = 0
    mask: torch.Tensor | None = None  # the first call's 2-D attention mask (for right_padded)
    _right_padded: bool | None = None

    @property
    def right_padded(self) -> bool:
        """Whether the first call's batch is right-padded; read from the mask only when a position spec needs it
        (reading it back makes the host wait for the device)."""
        if self._right_padded is None:
            mask = self.mask
            self._right_padded = bool(isinstance(mask, torch.Tensor) and mask.dim() == 2
                                      and bool((mask[:, -1] == 0).any()))
        return self._right_padded

    @right_padded.setter
    def right_padded(self, value: bool) -> None:
        self._right_padded = value


@dataclass
class Explicit:
    """Explicit absolute positions ``[batch, k]`` with a validity mask for ragged rows."""

    positions: torch.Tensor  # [batch or 1, k], long, may be negative (from the end of the prompt)
    valid: torch.Tensor  # [batch or 1, k], bool


def normalise(spec: PositionSpec) -> str | Explicit:
    """Check a position spec and bring explicit ones to :class:`Explicit`."""
    if isinstance(spec, str):
        if spec not in NAMED:
            raise PositionError(f"unknown position spec '{spec}': use one of {', '.join(NAMED)}, or integers")
        return spec
    if isinstance(spec, int):
        return Explicit(torch.tensor([[spec]]), torch.ones(1, 1, dtype=torch.bool))
    if isinstance(spec, torch.Tensor):
        tensor = spec.long().cpu()
        if tensor.dim() == 1:
            tensor = tensor[:, None]
        if tensor.dim() != 2:
            raise PositionError(f"positions must be [batch] or [batch, k], got shape {tuple(spec.shape)}")
        return Explicit(tensor, torch.ones_like(tensor, dtype=torch.bool))
    items = list(spec)
    if not items:
        raise PositionError("an empty list of positions selects nothing: give at least one position")
    if all(isinstance(item, int) for item in items):
        return Explicit(torch.tensor([items]), torch.ones(1, len(items), dtype=torch.bool))
    rows = [list(row) if not isinstance(row, int) else [row] for row in items]
    width = max(len(row) for row in rows)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, row in enumerate(rows):
        positions[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        valid[r, : len(row)] = True
    return Explicit(positions, valid)


@dataclass
class Selection:
    """The positions of one call that a spec selects.

    ``local [batch, P]`` are indices into the call's ``T`` positions, ``valid [batch, P]`` marks the real ones,
    ``absolute [batch, P]`` the absolute positions; ``slots`` (explicit specs only) says which column of the spec
    each selected column fills. ``everything`` is True when all positions are selected (no indexing needed).
    """

    local: torch.Tensor
    valid: torch.Tensor
    absolute: torch.Tensor
    slots: torch.Tensor | None = None
    everything: bool = False

    @property
    def empty(self) -> bool:
        return self.local.shape[1] == 0 or not bool(self.valid.any())


def _range_selection(call: CallState, start: int, stop: int) -> Selection:
    local = torch.arange(start, stop)[None, :].expand(call.batch, -1)
    everything = start == 0 and stop == call.seq_len
    return Selection(local, torch.ones_like(local, dtype=torch.bool), local + call.offset, everything=everything)


def select(spec: str | Explicit, call: CallState) -> Selection:
    """Resolve a normalised spec for the current call. Raises :class:`PositionError` for positions past the
    sequence (checked on the first call, where the whole prompt is known)."""
    if isinstance(spec, str):
        first = call.offset == 0
        if spec == "all" or (spec == "prompt" and first) or (spec == "generated" and not first):
            return _range_selection(call, 0, call.seq_len)
        if spec == "last":
            if first and call.right_padded:
                raise PositionError(
                    "position 'last' needs left padding, but this batch is right-padded: set "
                    "tokenizer.padding_side = 'left' (neuronscope.inputs does) or give explicit positions"
                )
            return _range_selection(call, call.seq_len - 1, call.seq_len)
        return _range_selection(call, 0, 0)
    positions, valid = spec.positions, spec.valid
    if positions.shape[0] not in (1, call.batch):
        raise PositionError(
            f"positions are given for {positions.shape[0]} rows but the batch has {call.batch} rows"
        )
    positions = positions.expand(call.batch, -1)
    valid = valid.expand(call.batch, -1)
    absolute = torch.where(positions < 0, positions + call.prompt_len, positions)
    if call.offset == 0:
        bad = valid & ((absolute < 0) | (absolute >= call.seq_len))
        if bool(bad.any()):
            row, col = (int(i) for i in bad.nonzero()[0])
            raise PositionError(
                f"position {int(positions[row, col])} (row {row}) is outside the sequence of length "
                f"{call.seq_len}: positions must be in [-{call.seq_len}, {call.seq_len - 1}]"
            )
    local = absolute - call.offset
    in_call = valid & (local >= 0) & (local < call.seq_len)
    return Selection(local.clamp(0, max(call.seq_len - 1, 0)), in_call, absolute,
                     slots=torch.arange(positions.shape[1]))


def per_call(spec: str | Explicit, extra: Callable[[CallState, torch.device], tuple] | None = None
             ) -> Callable[[CallState, torch.device], tuple]:
    """``resolve(call, device) -> (selection, local on device, *extra(call, device))``, resolved once per forward
    call and device: the selection depends on the call, not on the layer, so a forward costs no per-layer position
    work nor host-to-device copies (each makes the host wait); ``extra`` adds per-call, per-device tensors."""
    cache: dict[tuple[int, str], tuple] = {}

    def resolve(call: CallState, device: torch.device) -> tuple:
        key = (call.calls, str(device))
        if key not in cache:
            if cache and next(iter(cache))[0] != call.calls:
                cache.clear()
            selection = select(spec, call)
            cache[key] = (selection, on_device(selection.local, device), *(extra(call, device) if extra else ()))
        return cache[key]

    return resolve
