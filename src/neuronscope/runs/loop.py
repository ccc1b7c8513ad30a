"""The one example loop: resumable, sharded across processes, batched with out-of-memory back-off.

Every workflow that goes over examples (prompts, images, questions) runs :func:`run_loop`: this process's shard
of the examples (``i % world == rank``), minus those already in the run's ledger (resume), in batches that halve
when they do not fit (:class:`~neuronscope.runs.batching.AdaptiveBatcher`). ``process(chunk)`` gets
``[(index, item), ...]`` and returns one :class:`Example` (tensors + a JSON record) or :class:`Skip` (a reason)
per item; each is written to the run folder as soon as its batch is done, so an interrupted run resumes where it
stopped and its result equals an uninterrupted one.

Example:
    >>> report = run_loop(run, prompts, lambda chunk: [Example({"x": torch.zeros(1)}, {"i": i}) for i, _ in chunk])
    >>> report.processed, report.done_before  # doctest: +SKIP
    (5, 0)
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from neuronscope.runs.batching import AdaptiveBatcher
from neuronscope.runs.folder import RunDir
from neuronscope.runs.shards import shard_indices

Item = TypeVar("Item")
LOG = logging.getLogger("neuronscope")


@dataclass
class Example:
    """What one example produced: tensors (or None) and a JSON-able record."""

    tensors: Mapping[str, Any] | None
    record: dict[str, Any]


@dataclass
class Skip:
    """An example left out, with the reason (recorded in the ledger, reported, counted; never silently dropped)."""

    reason: str
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoopReport(Generic[Item]):
    """What :func:`run_loop` did in this process.

    Attributes:
        total: examples of this process's shard.
        done_before: of those, found finished in the ledger (a resumed run).
        processed: computed in this call (skips included).
        skipped: ``{"index", "reason", **record}`` of the examples skipped in this call.
        backoffs: ``(from, to)`` batch sizes of every out-of-memory back-off.
        outcomes: index -> :class:`Example` / :class:`Skip` of this call (kept when ``keep=True``).
    """

    total: int = 0
    done_before: int = 0
    processed: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    backoffs: list[tuple[int, int]] = field(default_factory=list)
    outcomes: dict[int, Example | Skip] = field(default_factory=dict)


def run_loop(
    run: RunDir | None,
    items: Sequence[Item],
    process: Callable[[list[tuple[int, Item]]], Sequence[Example | Skip]],
    *,
    batch_size: int = 8,
    label: str = "examples",
    keep: bool = False,
) -> LoopReport[Item]:
    """Process this process's pending share of ``items`` in adaptive batches, storing each outcome as it comes.

    Args:
        run: the run folder (its rank / world pick the shard; its ledger says what is done), or None to keep
            everything in memory (one process, nothing resumable).
        items: the examples, indexable; ``index`` is the position here (the merge order).
        process: ``process([(index, item), ...]) -> [Example | Skip, ...]``, one outcome per item, in order.
        batch_size: the first batch size (halved on out-of-memory, never raised again).
        label: what the items are, for the progress bar.
        keep: keep every outcome in :attr:`LoopReport.outcomes` (always kept when ``run`` is None).

    Raises:
        NeuronscopeError: a single example does not fit in memory (the message says what to do), or ``process``
            returned the wrong number of outcomes.
    """
    from neuronscope.errors import NeuronscopeError

    rank, world = (run.rank, run.world) if run is not None else (0, 1)
    shard = shard_indices(len(items), rank, world)
    done = run.done_indices() if run is not None else set()
    pending = [(index, items[index]) for index in shard if index not in done]
    report: LoopReport[Item] = LoopReport(total=len(shard), done_before=len(shard) - len(pending))
    keep = keep or run is None

    def note_backoff(old: int, new: int) -> None:
        LOG.warning("out of memory at batch size %d; going on with %d", old, new)

    batcher = AdaptiveBatcher(batch_size, on_backoff=note_backoff)
    bar = _progress(len(pending), label if world == 1 else f"{label} (rank {rank})")
    try:
        for chunk, outcomes in batcher.map(pending, process):
            outcomes = list(outcomes)
            if len(outcomes) != len(chunk):
                raise NeuronscopeError(f"the example function returned {len(outcomes)} outcomes for {len(chunk)} "
                                       "examples; return one per example")
            for (index, _), outcome in zip(chunk, outcomes, strict=True):
                _store(run, index, outcome, report)
                if keep:
                    report.outcomes[index] = outcome
            bar.update(len(chunk))
    finally:
        bar.close()
    report.backoffs = list(batcher.backoffs)
    return report


def _store(run: RunDir | None, index: int, outcome: Example | Skip, report: LoopReport[Any]) -> None:
    report.processed += 1
    if isinstance(outcome, Skip):
        record = {**outcome.record, "skipped": outcome.reason}
        report.skipped.append({"index": index, **record})
        LOG.warning("skipped %s: %s", outcome.record.get("where", outcome.record.get("id", index)), outcome.reason)
        if run is not None:
            run.write_example(index, None, record)
        return
    if run is not None:
        run.write_example(index, dict(outcome.tensors) if outcome.tensors else None, outcome.record)


class _NoBar:
    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


def _progress(total: int, label: str) -> Any:
    """A tqdm bar on stderr when it is a terminal (quiet in logs, pipes and tests)."""
    if total == 0 or not sys.stderr.isatty():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="ex", leave=False)
