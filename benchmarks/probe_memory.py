"""What the multimodal streaming call holds at its peak, allocation by allocation (a probe, not a benchmark of
record): the allocator's trace of one call, replayed to the moment the most bytes were live; those bytes grouped by
where they were allocated (the innermost frame in neuronscope, the innermost in transformers).

Each configuration starts from a collected, emptied allocator, runs one call (compiling where asked), then the
traced call. ``baseline``: what was allocated before the traced call (weights, kept graphs); ``peak_extra``: the
most bytes the call itself had live at once, over the weights; the groups add up to it.

    python benchmarks/probe_memory.py OUT --batches 4 6 --compile both
"""

from __future__ import annotations

import argparse
import gc
import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from bench_multimodal import _images, build, streaming_call
from common import COMPILE_CHOICES, weights_bytes


def _where(frames: list[dict[str, Any]]) -> str:
    """``neuronscope-frame | transformers-frame`` of an allocation's stack (innermost first)."""
    def first(part: str) -> str:
        for frame in frames:
            if part in frame["filename"]:
                return f"{frame['filename'].rsplit('/', 1)[-1]}:{frame['line']} {frame['name']}"
        return "-"

    return f"{first('neuronscope')} | {first('transformers')}"


def peak_groups(trace: list[dict[str, Any]], top: int = 15) -> tuple[int, list[tuple[str, int]]]:
    """The most bytes live at once in ``trace`` (one device's allocator events) and the largest groups then."""
    live: dict[int, tuple[int, str]] = {}
    total = best = 0
    best_live: dict[int, tuple[int, str]] = {}
    for event in trace:
        if event["action"] == "alloc":
            live[event["addr"]] = (event["size"], _where(event.get("frames", [])))
            total += event["size"]
            if total > best:
                best, best_live = total, dict(live)
        elif event["action"] == "free_completed" and event["addr"] in live:
            total -= live.pop(event["addr"])[0]
    groups: Counter = Counter()
    for size, where in best_live.values():
        groups[where] += size
    return best, groups.most_common(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--batches", nargs="+", type=int, default=[4, 6])
    parser.add_argument("--compile", choices=tuple(COMPILE_CHOICES), default="both")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build(False, torch.device("cuda"), torch.bfloat16)
    weights = weights_bytes(model)
    images = _images(max(args.batches), 336)
    rows = []
    for size in args.batches:
        for compiled in COMPILE_CHOICES[args.compile]:
            def call(size=size, compiled=compiled):
                return streaming_call(model, processor, images[:size], False, slots=None, compile=compiled)

            call()
            gc.collect()
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            baseline = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.memory._record_memory_history(max_entries=500_000)
            call()
            torch.cuda.synchronize()
            snapshot = torch.cuda.memory._snapshot()
            torch.cuda.memory._record_memory_history(enabled=None)
            peak = torch.cuda.max_memory_allocated()
            device = torch.cuda.current_device()
            extra, groups = peak_groups(snapshot["device_traces"][device])
            row = {"batch": size, "compiled": compiled, "baseline_over_weights": baseline / weights,
                   "peak_over_weights": peak / weights, "peak_extra_gib": extra / 2**30,
                   "groups_gib": [(where, size_ / 2**30) for where, size_ in groups]}
            rows.append(row)
            print(json.dumps(row, indent=1), flush=True)
            (out / "probe_memory.json").write_text(json.dumps(rows, indent=1))
            del snapshot
            gc.collect()


if __name__ == "__main__":
    main()
