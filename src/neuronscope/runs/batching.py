"""Out-of-memory back-off: run a function over items in batches, halving the batch size when a batch does not fit.

A batch that raises an out-of-memory error (``torch.OutOfMemoryError``, which ``torch.cuda.OutOfMemoryError``
is, a ``RuntimeError`` whose message says "out of memory", or :class:`SimulatedOutOfMemory`) is retried with half
as many items, and the run goes on with the smaller size. Only when a single item does not fit is the error
turned into a :class:`~neuronscope.errors.NeuronscopeError` that says what to do.

Tests (and users who want to check the back-off) can simulate a small GPU: with the environment variable
``NEURONSCOPE_SIMULATE_OOM_ABOVE=N`` every batch of more than ``N`` items raises :class:`SimulatedOutOfMemory`
before the function runs.

Example:
    >>> batcher = AdaptiveBatcher(batch_size=8)
    >>> [sum(chunk) for chunk, _ in batcher.map(list(range(10)), lambda chunk: None)]
    [28, 17]
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from neuronscope.errors import NeuronscopeError

Item = TypeVar("Item")
Result = TypeVar("Result")

SIMULATE_ENV = "NEURONSCOPE_SIMULATE_OOM_ABOVE"


class SimulatedOutOfMemory(torch.OutOfMemoryError):
    """Raised in place of a real out-of-memory error to test the back-off on machines without a GPU."""


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA / MPS / CPU allocator out-of-memory errors and :class:`SimulatedOutOfMemory`.

    Example:
        >>> is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
        True
        >>> is_out_of_memory(ValueError("bad"))
        False
    """
    if isinstance(error, torch.OutOfMemoryError):
        return True
    if isinstance(error, RuntimeError):
        message = str(error).lower()
        return "out of memory" in message or "can't allocate memory" in message
    return False


def free_memory() -> None:
    """Release cached allocator blocks after an out-of-memory error, so that the smaller batch can fit."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def simulated_limit() -> int | None:
    """The batch size above which :class:`SimulatedOutOfMemory` is raised (``NEURONSCOPE_SIMULATE_OOM_ABOVE``)."""
    value = os.environ.get(SIMULATE_ENV)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise NeuronscopeError(f"{SIMULATE_ENV}={value!r} is not an integer; unset it or give a batch size") from None


@dataclass
class AdaptiveBatcher:
    """Runs ``function(chunk)`` over consecutive chunks of items; halves the chunk size on out-of-memory.

    Attributes:
        batch_size: the current chunk size (starts at the requested size, only ever goes down).
        min_batch_size: below this the error is raised (default 1).
        backoffs: ``(from_size, to_size)`` for every halving, in order.
        on_backoff: called as ``on_backoff(from_size, to_size)`` (e.g. to print a note).

    Example:
        >>> batcher = AdaptiveBatcher(batch_size=4)
        >>> results = [r for _, r in batcher.map([1, 2, 3, 4, 5], lambda chunk: [x * x for x in chunk])]
        >>> results
        [[1, 4, 9, 16], [25]]
    """

    batch_size: int
    min_batch_size: int = 1
    backoffs: list[tuple[int, int]] = field(default_factory=list)
    on_backoff: Callable[[int, int], None] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise NeuronscopeError(f"batch size must be a positive integer, got {self.batch_size!r}")
        if self.min_batch_size < 1 or self.min_batch_size > self.batch_size:
            raise NeuronscopeError(
                f"min_batch_size must be between 1 and the batch size ({self.batch_size}), got {self.min_batch_size}"
            )

    def map(
        self, items: Sequence[Item], function: Callable[[list[Item]], Result]
    ) -> Iterator[tuple[list[Item], Result]]:
        """Yield ``(chunk, function(chunk))`` for consecutive chunks covering ``items`` in order.

        A chunk that runs out of memory is retried at half the size (the results of earlier chunks stand);
        the smaller size is kept for the rest of the items.

        Raises:
            NeuronscopeError: a chunk of ``min_batch_size`` items still runs out of memory.
        """
        start = 0
        limit = simulated_limit()
        while start < len(items):
            chunk = list(items[start:start + self.batch_size])
            out_of_memory = False
            try:
                if limit is not None and len(chunk) > limit:
                    raise SimulatedOutOfMemory(f"simulated out of memory: batch of {len(chunk)} > {limit}")
                result = function(chunk)
            except Exception as error:  # noqa: BLE001 - only out-of-memory errors are handled, others re-raised
                if not is_out_of_memory(error):
                    raise
                out_of_memory = True
            if out_of_memory:
                # Outside the except block, so the traceback no longer holds the failed batch's tensors.
                free_memory()
                self._halve(len(chunk))
                continue
            yield chunk, result
            start += len(chunk)

    def _halve(self, failed_size: int) -> None:
        if failed_size <= self.min_batch_size:
            raise NeuronscopeError(
                f"out of memory with a batch of {failed_size}: the model does not fit at this size; spread it "
                "over more GPUs (--device-map auto), use a smaller dtype (--dtype bf16), score fewer layers "
                "(--layers) or use shorter inputs"
            )
        new_size = max(self.min_batch_size, failed_size // 2)
        self.backoffs.append((failed_size, new_size))
        self.batch_size = new_size
        if self.on_backoff is not None:
            self.on_backoff(failed_size, new_size)
