"""The greedy choice of a decode step (with transformers' ``min_new_tokens`` and ``suppress_tokens`` processors) and
the host's reading of whether every row has stopped, one step late on a GPU; shared by the batched static decoder
(:mod:`neuronscope.trace.decode`) and slot decoding (:mod:`neuronscope.trace.slot_decode`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from neuronscope.inputs.batch import _tokenizer


class Picker:
    """Greedy choice with transformers' ``min_new_tokens`` and ``suppress_tokens`` processors (graph-safe)."""

    def __init__(self, eos: torch.Tensor | None, min_new_tokens: int, suppress: torch.Tensor | None,
                 settings: tuple = ()):
        self.eos, self.min_new_tokens, self.suppress = eos, min_new_tokens, suppress
        self.settings = settings  # the host values it was made from (a kept decoder compares them)

    def __call__(self, logits: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        scores = logits.float()
        if self.suppress is not None:
            scores = scores.index_fill(-1, self.suppress, float("-inf"))
        if self.eos is not None and self.min_new_tokens > 0:  # end of sequence barred before min_new_tokens
            barred = (step < self.min_new_tokens)[:, None]
            eos_scores = scores.index_select(-1, self.eos)
            scores = scores.index_copy(-1, self.eos, torch.where(barred, float("-inf"), eos_scores))
        return scores.argmax(-1)


def token_tensor(ids: Iterable[int] | int | None, device: torch.device) -> torch.Tensor | None:
    if ids is None:
        return None
    ids = [ids] if isinstance(ids, int) else list(ids)
    return torch.tensor(ids, dtype=torch.long, device=device) if ids else None


class LateReads:
    """Device values read on the host ``lag`` pushes after they were queued, so that the host never drains the
    queue: on CUDA each value goes to fresh pinned memory behind an event, and a read waits only for that event;
    with ``lag`` 0, at once."""

    def __init__(self, lag: int):
        self.lag = lag
        self.pending: deque[tuple[torch.Tensor, Any, Any]] = deque()

    def push(self, value: torch.Tensor, tag: Any = None) -> list[tuple[torch.Tensor, Any]]:
        """Queue ``value``'s copy (with ``tag``); the ``(host copy, tag)`` pairs that are now ``lag`` pushes old."""
        cuda = value.is_cuda
        host = torch.empty(value.shape, dtype=value.dtype, pin_memory=cuda)
        host.copy_(value, non_blocking=cuda)
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        self.pending.append((host, event, tag))
        ready = []
        while len(self.pending) > self.lag:
            host, event, tag = self.pending.popleft()
            if event is not None:
                event.synchronize()
            ready.append((host, tag))
        return ready


class StopFlags:
    """Whether any row of ``unfinished [B]`` is still running, read from the host without draining the queue: with
    ``lagged`` (the default on CUDA) :meth:`after_step` reads the previous step's answer (:class:`LateReads`), whose
    work is done while the current one runs; otherwise it reads the current one."""

    def __init__(self, unfinished: torch.Tensor, lagged: bool | None = None):
        self.unfinished = unfinished
        self.lagged = unfinished.is_cuda if lagged is None else lagged
        self.reads = LateReads(1)

    def after_step(self) -> int | None:
        """None while some row runs; else how many of the steps queued so far came after every row had stopped
        (0, or 1 when lagged)."""
        if not self.lagged:
            return None if bool(self.unfinished.any()) else 0
        ready = self.reads.push(self.unfinished.any()[None])
        if not ready:  # the first step: nothing is a step old yet
            return None
        return None if bool(ready[-1][0]) else 1


def greedy_settings(model: nn.Module, processor: Any, kwargs: dict[str, Any],
                    device: torch.device) -> tuple[int, Picker]:
    """The pad id and the :class:`Picker` of one greedy call, as ``model.generate`` reads them: the
    ``min_new_tokens`` / ``suppress_tokens`` keywords over the generation config's, its end-of-sequence ids, and the
    tokenizer's pad token (its end-of-sequence token where it has none)."""
    tokenizer = _tokenizer(processor)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = model.generation_config
    min_new = kwargs.get("min_new_tokens", getattr(config, "min_new_tokens", None))
    suppress = kwargs.get("suppress_tokens", getattr(config, "suppress_tokens", None))
    eos_ids = getattr(config, "eos_token_id", None)
    eos = token_tensor(eos_ids, device)
    settings = (repr(eos_ids), int(min_new or 0), repr(suppress))
    return int(pad_id), Picker(eos, int(min_new or 0), token_tensor(suppress, device), settings)
