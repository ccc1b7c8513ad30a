"""A run session: the results folder of this process (rank-aware), its config and meta records, the loop.

One process or a data-parallel launch (torchrun / accelerate: ``RANK`` and ``WORLD_SIZE`` set) alike: rank 0
checks and prepares the folder while the other ranks wait, every rank then runs its shard of the examples, and
:meth:`Session.gather` waits for all of them before rank 0 goes on alone (merge, select, report).

Example:
    >>> with run_session("runs/x", {"method": "contribution"}) as session:      # doctest: +SKIP
    ...     session.loop(prompts, score_chunk, batch_size=8)
    ...     if session.gather():                                                # rank 0 only from here
    ...         merged = merge_shards(session.run, expected=len(prompts))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuronscope.runs.folder import RunDir
from neuronscope.runs.loop import Example, LoopReport, Skip, run_loop
from neuronscope.runs.parallel import barrier, process_group
from neuronscope.runs.shards import ProcessInfo


@dataclass
class Session:
    """This process's run folder and place in the launch."""

    run: RunDir
    process: ProcessInfo

    @property
    def is_main(self) -> bool:
        return self.process.rank == 0

    def loop(self, items: Sequence[Any], process: Callable[[list[tuple[int, Any]]], Sequence[Example | Skip]],
             *, batch_size: int = 8, label: str = "examples") -> LoopReport[Any]:
        """:func:`~neuronscope.runs.loop.run_loop` over this process's shard of ``items``."""
        return run_loop(self.run, items, process, batch_size=batch_size, label=label)

    def gather(self) -> bool:
        """Wait for every process; True on rank 0 (which goes on to merge and report), False elsewhere."""
        barrier()
        return self.is_main


@contextmanager
def run_session(out: str | Path, config: Mapping[str, Any], *, resume: bool = False, overwrite: bool = False,
                runtime: Mapping[str, Any] | None = None) -> Iterator[Session]:
    """Open ``out`` for this process (see :class:`RunDir` for the safety rules), record ``config`` (refused on
    resume if it differs) and ``meta.json`` (with ``runtime``), and yield the :class:`Session`."""
    with process_group() as process:
        if process.rank > 0:
            barrier()  # rank 0 checks and prepares the folder first
        run = RunDir(out, resume=resume, overwrite=overwrite, rank=process.rank, world=process.world)
        run.write_config(dict(config))
        run.write_meta({"runtime": dict(runtime or {})})
        if process.rank == 0:
            barrier()
        yield Session(run, process)
