"""Results folders (atomic, resumable, shardable), plots and the self-contained HTML report.

- `RunDir`: one run's folder; atomic JSON / CSV / safetensors / PNG / text writes; config and meta records;
  per-example results with a progress ledger (`write_example`, `done_keys`).
- `for_each_example`, `merge_shards`, `shard_indices`, `detect_rank_world`: resumable, data-parallel loops.
- `plots`: matplotlib figures (layer histogram, score histogram, bar chart), no display needed.
- `build_report`: `report.html` with everything inlined (see `neuronscope.report.html` for the file names).

Example:
    >>> from neuronscope.report import RunDir, build_report
    >>> run = RunDir("runs/demo", overwrite=True)  # doctest: +SKIP
    >>> run.write_json("metrics.json", {"pcr": -0.42})  # doctest: +SKIP
    >>> build_report(run.path)  # doctest: +SKIP
"""

from neuronscope.report.atomic import atomic_open, atomic_write_bytes, atomic_write_text
from neuronscope.report.html import build_report
from neuronscope.report.rundir import RunDir, example_key, run_metadata
from neuronscope.report.shards import (
    MergedExamples,
    ProcessInfo,
    detect_rank_world,
    for_each_example,
    merge_shards,
    pending_indices,
    shard_indices,
)

__all__ = [
    "MergedExamples",
    "ProcessInfo",
    "RunDir",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "build_report",
    "detect_rank_world",
    "example_key",
    "for_each_example",
    "merge_shards",
    "pending_indices",
    "run_metadata",
    "shard_indices",
]
