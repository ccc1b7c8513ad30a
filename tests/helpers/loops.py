"""The one example loop driven one example at a time, as the run-folder tests need it."""

from __future__ import annotations

from neuronscope.runs.loop import Example, run_loop


def each(run, items, compute):
    """``compute(index, item) -> (tensors, record)`` for this process's pending items; the indices computed."""
    report = run_loop(run, items, lambda chunk: [Example(*compute(i, x)) for i, x in chunk], batch_size=1, keep=True)
    return sorted(report.outcomes)
