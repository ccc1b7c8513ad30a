"""Data-parallel launch support: when started by torchrun / accelerate (RANK and WORLD_SIZE set), each process
handles its shard of the examples and waits for the others at a barrier before rank 0 merges.

The process group uses gloo (it only synchronises; the scores travel through the shared results folder), so the
same code runs on CPU-only machines, on several GPUs of one host, and on several nodes sharing a file system.

Example (two processes on one machine)::

    torchrun --nproc-per-node 2 -m neuronscope.cli.main locate --model M --prompts p.jsonl --out runs/x
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch.distributed as dist

from neuronscope.runs.shards import ProcessInfo, detect_rank_world


@contextmanager
def process_group(timeout_minutes: float = 180.0) -> Iterator[ProcessInfo]:
    """This process's rank and world; a gloo process group is open inside the block when world > 1."""
    info = detect_rank_world()
    started = False
    if info.world > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(minutes=timeout_minutes))
        started = True
    try:
        yield info
    finally:
        if started:
            dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process of the group (no-op when running alone)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
