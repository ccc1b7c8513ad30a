"""OOM back-off: a batch that runs out of memory is retried at half the size and the results are unchanged."""

from __future__ import annotations

import pytest
import torch

from neuronscope.errors import NeuronscopeError
from neuronscope.runs.batching import (
    SIMULATE_ENV,
    AdaptiveBatcher,
    SimulatedOutOfMemory,
    is_out_of_memory,
)


def run_batched(items, function, batch_size, on_backoff=None):
    """The per-item results of ``function`` over ``items`` in adaptive batches."""
    batcher = AdaptiveBatcher(batch_size, on_backoff=on_backoff)
    return [result for _, results in batcher.map(items, function) for result in results]


def squares_needing_small_batches(limit: int, calls: list[int]):
    """A batched function that 'runs out of memory' on more than ``limit`` items."""

    def function(chunk: list[int]) -> list[int]:
        calls.append(len(chunk))
        if len(chunk) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return [x * x for x in chunk]

    return function


def test_halves_until_it_fits_and_keeps_going_at_that_size() -> None:
    calls: list[int] = []
    notes: list[tuple[int, int]] = []
    out = run_batched(list(range(11)), squares_needing_small_batches(3, calls), 8,
                      on_backoff=lambda old, new: notes.append((old, new)))
    assert out == [x * x for x in range(11)]
    # 8 fails, 4 fails, 2 fits; then the rest goes at 2 (never back up to 8).
    assert calls == [8, 4, 2, 2, 2, 2, 2, 1]
    assert notes == [(8, 4), (4, 2)]


def test_one_item_that_does_not_fit_is_a_clear_error() -> None:
    with pytest.raises(NeuronscopeError, match="out of memory with a batch of 1.*--device-map auto"):
        run_batched([1, 2], squares_needing_small_batches(0, []), 4)


def test_other_errors_are_not_swallowed() -> None:
    def broken(chunk: list[int]) -> list[int]:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        run_batched([1, 2, 3], broken, 2)


def test_simulated_oom_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIMULATE_ENV, "2")
    seen: list[int] = []
    batcher = AdaptiveBatcher(batch_size=5)
    chunks = [chunk for chunk, _ in batcher.map(list(range(7)), lambda chunk: seen.append(len(chunk)))]
    assert [x for chunk in chunks for x in chunk] == list(range(7))
    assert max(seen) == 2 and batcher.backoffs == [(5, 2)]


def test_out_of_memory_detection() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(SimulatedOutOfMemory("x"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(KeyError("out of memory"))


def test_bad_batch_sizes() -> None:
    with pytest.raises(NeuronscopeError, match="positive integer"):
        AdaptiveBatcher(0)
    with pytest.raises(NeuronscopeError, match="min_batch_size"):
        AdaptiveBatcher(2, min_batch_size=3)
