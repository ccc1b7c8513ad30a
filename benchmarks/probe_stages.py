"""Where the multimodal table's streaming call spends its wall time and its memory, stage by stage (a probe, not a
benchmark of record: the device is synchronised between stages).

Stages of ``bench_multimodal.streaming_call``: ``encode`` (the processor on the host, the images' pixels), ``prefill``
(the vision tower and the language model over the prompts: the static decoder's first call), ``decode`` (the decode
steps), ``score`` (the rest: the contributions of the kept targets, their top-k and the copy to the host). For each
stage: its median seconds over ``--calls`` calls and the peak memory allocated during it over the weights. With
``--profile``, one more call of each configuration under torch.profiler: device-busy time and the top kernels.

``capture`` and ``first_step`` (inside ``decode``): recording the decode step's CUDA graph and the eager step before
it (the decoder's own graph is recorded afresh at every call). ``--start both``: each configuration also with the
decoder's start as it was before 2026-12-02 (``old``: the stop check, the first step's mask and the hooks' cache
length read from the device after the prompt, the static cache's step counters copied there during it, the step's
graph captured by ``torch.cuda.graph``, which synchronises and empties the cache), in the same process, and
whether both give the same tokens and kept neurons.

    python benchmarks/probe_stages.py OUT --batches 4 5 --compile both --profile
    python benchmarks/probe_stages.py OUT --batches 4 16 --compile no --start both
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from bench_multimodal import _images, build, streaming_call
from common import COMPILE_CHOICES, device_events, measure, weights_bytes


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


class OldStart:
    """The decoder's start before 2026-12-02, patched in while the context is open."""

    def __init__(self, decode):
        self.decode, self.saved = decode, {}

    def __enter__(self):
        from transformers import StaticCache

        decode = self.decode
        replayer = decode.StepReplayer

        class Draining(replayer):
            def __init__(self, step, what, graphs, drain=True, own_pool=False):
                super().__init__(step, what, graphs, drain=True, own_pool=own_pool)

        def run(self, graphs, backend=None):
            chosen = self._prefill()
            done = 1
            if self.steps > 1 and bool(self.unfinished.any()):
                with decode.compiled_decoder(self.model, backend) if backend else decode.nullcontext():
                    done = self._decode(chosen[:, None].clone(), graphs)
            return torch.cat([self.inputs["input_ids"], self.tokens[:, :done]], 1)

        patches = {"StepReplayer": Draining, "drive": lambda cache, length: None,
                   "attention_implementation": lambda model: "eager (old start: transformers' mask)",
                   "new_static_cache": lambda config, length, device: StaticCache(config=config,
                                                                                  max_cache_len=length)}
        for name, value in patches.items():
            self.saved[name] = getattr(decode, name)
            setattr(decode, name, value)
        self.saved["run"] = decode._StaticDecoder.run
        decode._StaticDecoder.run = run
        return self

    def __exit__(self, *exc):
        self.decode._StaticDecoder.run = self.saved.pop("run")
        for name, value in self.saved.items():
            setattr(self.decode, name, value)
        self.saved.clear()


def _agreement(result: Any, first: Any) -> dict[str, Any]:
    """``result`` against ``first`` (CaptionContributions of one batch): the same tokens, the fraction of kept
    neurons the two share per target (mean and least), the largest value difference over the largest value."""
    shared = [len(set(a.tolist()) & set(b.tolist())) / max(len(a), 1)
              for a, b in zip(result.flat_indices, first.flat_indices, strict=False)]
    scale = float(first.values.abs().max()) or 1.0
    return {"tokens_equal": bool(torch.equal(result.generation.sequences, first.generation.sequences)),
            "kept_shared_mean": sum(shared) / max(len(shared), 1), "kept_shared_min": min(shared, default=1.0),
            "indices_equal": bool(torch.equal(result.flat_indices, first.flat_indices)),
            "max_value_diff_over_max": float((result.values - first.values).abs().max()) / scale
            if result.values.shape == first.values.shape else None}


def main() -> None:
    import neuronscope.inputs as inputs
    from neuronscope import reproducible
    from neuronscope.trace import decode, graphs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--batches", nargs="+", type=int, default=[4, 5])
    parser.add_argument("--compile", choices=tuple(COMPILE_CHOICES), default="both")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--start", choices=("new", "old", "both"), default="new")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    where = torch.device("cuda")
    model, processor = build(False, where, torch.bfloat16)
    weights = weights_bytes(model)
    images = _images(max(args.batches), 336)
    modes = COMPILE_CHOICES[args.compile]
    results = []
    starts = {"new": ["new"], "old": ["old"], "both": ["new", "old"]}[args.start]
    kept: dict[int, Any] = {}
    # the old start is compared eagerly only: compiled, it would reuse the code compiled under the new one
    for size, compiled, start_kind in [(size, compiled, kind) for size in args.batches for compiled in modes
                                       for kind in starts if not (compiled and kind == "old")]:
        def call(size=size, compiled=compiled, old=start_kind == "old"):
            with OldStart(decode) if old else contextlib.nullcontext():
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
        with reproducible():  # cuDNN's attention kernel differs from call to call (trace/reproducible.py)
            result = call()
        agreement = None
        if size in kept:  # against this batch's first configuration (eager, when --compile both)
            agreement = _agreement(result, kept[size])
        else:
            kept[size] = result
        row = {"batch": size, "compiled": compiled, "start": start_kind, "against_first": agreement,
               "first_call_seconds": first,
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
