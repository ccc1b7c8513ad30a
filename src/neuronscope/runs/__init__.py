"""Runs: the results folder of a run, its ledger, resume, shards across processes, and adaptive batches.

- :class:`RunDir` (:mod:`.folder`): one run's folder; atomic writes, config and meta records, per-example
  results with a progress ledger, and the safety rules (never overwrite another run by accident).
- :mod:`.shards`: which examples a process handles, and :func:`merge_shards` in example order.
- :mod:`.parallel`: the process group of a data-parallel launch (torchrun / accelerate).
- :mod:`.batching`: :class:`AdaptiveBatcher`, batches that halve on out-of-memory.

Example:
    >>> from neuronscope.runs import RunDir
    >>> run = RunDir("runs/demo", overwrite=True)  # doctest: +SKIP
    >>> run.write_json("metrics.json", {"pcr": -0.42})  # doctest: +SKIP
"""

from neuronscope.runs.folder import RunDir
from neuronscope.runs.ledger import example_key
from neuronscope.runs.shards import (
    MergedExamples,
    ProcessInfo,
    detect_rank_world,
    merge_shards,
    shard_indices,
)

__all__ = [
    "MergedExamples",
    "ProcessInfo",
    "RunDir",
    "detect_rank_world",
    "example_key",
    "merge_shards",
    "shard_indices",
]
