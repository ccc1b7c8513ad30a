"""Where the device waits during the multimodal table's streaming call: one call under torch.profiler (no
synchronisation added), its kernels laid against the host's stages, and every gap in which the device ran nothing
(a probe, not a benchmark of record).

For each stage of ``bench_multimodal.streaming_call`` (the host time between its start and end, stages nested as
they run: ``encode``, ``prefill``, ``first_step``, ``capture``, ``decode``, ``score``, ``copy``): the host's
seconds, the device's busy seconds in that window and its idle seconds; then the largest idle gaps of the whole
call, each with the host operation that was running when it began. ``processor``: the processor's own seconds on
the host for the same images (PIL, and the torchvision image processor on the host and on the GPU where
torchvision is installed). The call's Chrome trace is kept (gzip) for a closer look.

    python benchmarks/probe_timeline.py OUT --batches 5 6 --compile yes
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench_multimodal import PREFIX, PROMPT, _images, build, streaming_call
from common import COMPILE_CHOICES

STAGES = [("neuronscope.inputs", "encode_images", "encode"),
          ("neuronscope.trace.decode:_StaticDecoder", "_prefill", "prefill"),
          ("neuronscope.trace.decode:_StaticDecoder", "_decode", "decode"),
          ("neuronscope.trace.graphs", "on_side_stream", "first_step"),
          ("neuronscope.trace.graphs", "capture", "capture"),
          ("neuronscope.attribute.streaming", "buffered_decode", "generate"),
          ("neuronscope.attribute.streaming", "_pairs", "pairs"),
          ("neuronscope.attribute.streaming", "to_host", "copy")]


def _owner(path: str) -> Any:
    import importlib

    module, _, attribute = path.partition(":")
    owner = importlib.import_module(module)
    return getattr(owner, attribute) if attribute else owner


@contextlib.contextmanager
def marked():
    """Each stage function inside a ``record_function`` range of its label (nothing else changed)."""
    undo = []
    for path, name, label in STAGES:
        owner = _owner(path)
        original = getattr(owner, name)

        def wrapped(*args, _original=original, _label=label, **kwargs):
            with torch.profiler.record_function(f"stage:{_label}"):
                return _original(*args, **kwargs)

        setattr(owner, name, wrapped)
        undo.append((owner, name, original))
    try:
        yield
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def _busy_in(busy: list[tuple[float, float]], start: float, end: float) -> float:
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in busy)


def analyse(trace: dict[str, Any], gaps_kept: int = 25, smallest_gap_us: float = 200.0) -> dict[str, Any]:
    """Stages' host / busy / idle milliseconds and the largest device gaps of one profiled call (times in µs)."""
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    kernels = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    busy = _union(kernels)
    call = next(e for e in events if e.get("name") == "stage:call" and e.get("cat") == "user_annotation")
    start, end = call["ts"], call["ts"] + call["dur"]
    stages: dict[str, dict[str, float]] = {}
    for e in events:
        if e.get("cat") == "user_annotation" and e["name"].startswith("stage:") and e["name"] != "stage:call":
            label = e["name"][len("stage:"):]
            host = e["dur"]
            work = _busy_in(busy, e["ts"], e["ts"] + e["dur"])
            entry = stages.setdefault(label, {"host_ms": 0.0, "device_busy_ms": 0.0, "device_idle_ms": 0.0, "calls": 0})
            entry["host_ms"] += host / 1e3
            entry["device_busy_ms"] += work / 1e3
            entry["device_idle_ms"] += (host - work) / 1e3
            entry["calls"] += 1
    generate = [e for e in events if e.get("name") == "stage:generate" and e.get("cat") == "user_annotation"]
    if generate:  # the scores, their top-k and the copy: from the generation's end to the call's
        after = generate[-1]["ts"] + generate[-1]["dur"]
        work = _busy_in(busy, after, end)
        stages["after_generate"] = {"host_ms": (end - after) / 1e3, "device_busy_ms": work / 1e3,
                                    "device_idle_ms": (end - after - work) / 1e3, "calls": 1}
    inside = [(max(a, start), min(b, end)) for a, b in busy if b > start and a < end]
    gaps = [(a[1], b[0]) for a, b in zip(inside, inside[1:], strict=False) if b[0] - a[1] >= smallest_gap_us]
    if inside:
        gaps = [(start, inside[0][0])] * (inside[0][0] - start >= smallest_gap_us) + gaps
        gaps += [(inside[-1][1], end)] * (end - inside[-1][1] >= smallest_gap_us)
    host_ops = [e for e in events if e.get("cat") in ("cpu_op", "user_annotation", "cuda_runtime", "python_function")
                and start <= e["ts"] <= end]

    def running_at(moment: float) -> list[str]:
        spanning = [e for e in host_ops if e["ts"] <= moment <= e["ts"] + e["dur"]]
        spanning.sort(key=lambda e: e["ts"])
        return [e["name"][:80] for e in spanning[-4:]]

    largest = sorted(gaps, key=lambda gap: gap[0] - gap[1])[:gaps_kept]
    return {"call_ms": (end - start) / 1e3, "device_busy_ms": _busy_in(busy, start, end) / 1e3,
            "device_idle_ms": (end - start - _busy_in(busy, start, end)) / 1e3,
            "gaps_over_0_2_ms": len(gaps), "gaps_total_ms": sum(b - a for a, b in gaps) / 1e3,
            "stages": stages,
            "largest_gaps": [{"at_ms": (a - start) / 1e3, "ms": (b - a) / 1e3, "host": running_at(a)}
                             for a, b in sorted(largest)]}


def processor_seconds(processor: Any, images: list[Any], repeats: int = 5) -> dict[str, Any]:
    """The processor alone on these images: PIL (the table's), and torchvision's image processor on the host and
    on the GPU where it is installed (median seconds)."""
    from neuronscope.inputs.batch import _render_chat

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    texts = [_render_chat(processor, messages, PREFIX, content="parts")] * len(images)

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def timed(call) -> float:
        values = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            sync()
            values.append(time.perf_counter() - start)
        return statistics.median(values[1:])

    out: dict[str, Any] = {"pil": timed(lambda: processor(images=images, text=texts, return_tensors="pt",
                                                          padding=True))}
    out["pil_image_processor_only"] = timed(lambda: processor.image_processor(images, return_tensors="pt"))
    try:
        import transformers as T

        size = processor.image_processor.crop_size
        fast = T.LlavaImageProcessor(size={"shortest_edge": size["height"]}, do_pad=False, crop_size=size)
        out["torchvision_class"] = type(fast).__name__
        out["torchvision_host"] = timed(lambda: fast(images, return_tensors="pt"))
        out["torchvision_cuda"] = timed(lambda: fast(images, return_tensors="pt", device="cuda"))
    except Exception as error:  # noqa: BLE001 - a probe: say why, go on
        out["torchvision_error"] = f"{type(error).__name__}: {error}"[:200]
    return out


def main() -> None:
    from torch.profiler import ProfilerActivity, profile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--batches", nargs="+", type=int, default=[5, 6])
    parser.add_argument("--compile", choices=tuple(COMPILE_CHOICES), default="yes")
    parser.add_argument("--tiny", action="store_true", help="a CPU smoke test of the probe (figures mean nothing)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    where = torch.device("cpu" if args.tiny else "cuda")
    model, processor = build(args.tiny, where, torch.float32 if args.tiny else torch.bfloat16)
    images = _images(max(args.batches), 28 if args.tiny else 336)
    results = []
    for size in args.batches:
        for compiled in COMPILE_CHOICES[args.compile]:
            def call(size=size, compiled=compiled):
                with torch.profiler.record_function("stage:call"):
                    return streaming_call(model, processor, images[:size], args.tiny, slots=None, compile=compiled)

            activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (where.type == "cuda")
            for _ in range(2):
                call()
            with marked(), profile(activities=activities) as prof:
                call()
                if where.type == "cuda":
                    torch.cuda.synchronize()
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "trace.json")
                prof.export_chrome_trace(path)
                trace = json.loads(Path(path).read_text())
            name = f"trace_b{size}_{'compiled' if compiled else 'eager'}.json.gz"
            with gzip.open(out / name, "wt") as file:
                json.dump(trace, file)
            row = {"batch": size, "compiled": compiled, "trace": name, **analyse(trace),
                   "processor": processor_seconds(processor, images[:size])}
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "largest_gaps"}), flush=True)
            (out / "probe_timeline.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
