"""Where the multimodal table's streaming call spends its wall time and its memory, stage by stage (a probe, not a
benchmark of record: the device is synchronised between stages).

Stages of ``bench_multimodal.streaming_call``: ``encode`` (the processor on the host, the images' pixels), ``prefill``
(the vision tower and the language model over the prompts: the static decoder's first call), ``decode`` (the decode
steps), ``score`` (the rest: the contributions of the kept targets, their top-k and the copy to the host). For each
stage: its median seconds over ``--calls`` calls and the peak memory allocated during it over the weights. With
``--profile``, one more call of each configuration under torch.profiler: device-busy time and the top kernels.

``capture`` and ``first_step`` (inside ``decode``): recording the decode step's CUDA graph and the eager step before
it (the decoder's own graph is recorded afresh at every call).

    python benchmarks/probe_stages.py OUT --batches 4 5 --compile both --profile
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from bench_multimodal import _images, build, streaming_call
from common import device_events, measure, weights_bytes


class Stages:
    """Times (and peaks) of the wrapped stage functions, the device synchronised around each."""

    def __init__(self, weights: int):
        self.weights, self.seconds, self.peaks = weights, defaultdict(list), defaultdict(list)
        self.undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            out = original(*args, **kwargs)
            torch.cuda.synchronize()
            self.seconds[label].append(time.perf_counter() - start)
            self.peaks[label].append(torch.cuda.max_memory_allocated() / self.weights)
            return out

        setattr(owner, name, timed)
        self.undo.append((owner, name, original))

    def restore(self) -> None:
        for owner, name, original in reversed(self.undo):
            setattr(owner, name, original)

    def summary(self, total: float) -> dict[str, Any]:
        """Each stage's median seconds and largest peak; ``total``: the wrapped call's median seconds."""
        out = {label: {"seconds": statistics.median(values), "peak_over_weights": max(self.peaks[label])}
               for label, values in self.seconds.items()}
        out["total"] = {"seconds": total}
        out["score_and_rest"] = {"seconds": out["total"]["seconds"] - sum(
            out[label]["seconds"] for label in ("encode", "prefill", "decode") if label in out)}
        return out


def _profiled(call) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    kernels = device_events(averages)
    busy = sum(e.self_device_time_total for e in kernels)
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:25]
    return {"device_busy_ms": busy / 1e3, "device_ops": sum(e.count for e in kernels),
            "top": [{"name": e.key[:90], "ms": e.self_device_time_total / 1e3, "count": e.count} for e in top]}


def main() -> None:
    import neuronscope.inputs as inputs
    from neuronscope.trace import decode, graphs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--batches", nargs="+", type=int, default=[4, 5])
    parser.add_argument("--compile", choices=("no", "yes", "both"), default="both")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    where = torch.device("cuda")
    model, processor = build(False, where, torch.bfloat16)
    weights = weights_bytes(model)
    images = _images(max(args.batches), 336)
    modes = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    results = []
    for size, compiled in [(size, compiled) for size in args.batches for compiled in modes]:
        def call(size=size, compiled=compiled):
            return streaming_call(model, processor, images[:size], False, slots=None, compile=compiled)

        first = measure(call, where, repeats=1, warmup=0)["seconds"]
        call()
        stages = Stages(weights)
        stages.wrap(inputs, "encode_images", "encode")
        stages.wrap(decode._StaticDecoder, "_prefill", "prefill")
        stages.wrap(decode._StaticDecoder, "_decode", "decode")
        stages.wrap(graphs, "capture", "capture")
        stages.wrap(graphs, "on_side_stream", "first_step")
        try:
            wrapped = measure(call, where, repeats=args.calls, warmup=0)
        finally:
            stages.restore()
        unwrapped = measure(call, where, repeats=args.calls, warmup=0, weights=weights)  # as the table times it
        row = {"batch": size, "compiled": compiled, "first_call_seconds": first,
               "unwrapped_seconds": unwrapped["median_seconds"],
               "unwrapped_peak_over_weights": unwrapped["peak_over_weights"],
               "images_per_second": size / unwrapped["median_seconds"],
               "stages": stages.summary(wrapped["median_seconds"])}
        if args.profile:
            row["profile"] = _profiled(call)
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
        (out / "probe_stages.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
