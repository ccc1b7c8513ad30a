"""What torch.compile of the stock modules would buy the multimodal pipeline (a probe, not a benchmark of record).

The table's streaming call (``bench_multimodal.streaming_call``) on the random LLaVA-1.5-7B shape, at a few batch
sizes, under variants that compile parts of the model (instance ``forward`` replaced by its compiled version, put
back afterwards):

- ``eager``: the code as it is;
- ``norms``: every hook-free RMSNorm of the language model compiled (one fused kernel instead of ~8);
- ``vision``: the vision tower's encoder layers compiled too;
- ``decoder``: the whole language model compiled for the decode steps only (the prompt runs eagerly,
  ``torch.compiler.set_stance("force_eager")``), hooks traced in: the upper bound of compiling.

Each row: compile + first call seconds, the median wall of ``--calls`` calls, images/s, peak over weights, and
whether tokens and kept scores equal the eager ones.

    python benchmarks/probe_compile.py OUT --batches 4 6 --variants eager norms vision decoder
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from bench_multimodal import _images, build, streaming_call
from common import sync, weights_bytes


def _norms(model) -> list[torch.nn.Module]:
    from neuronscope.models.adapter import get_adapter

    adapter = get_adapter(model)
    found = [module for layer in adapter.layers for name, module in layer.named_children() if "norm" in name]
    return found + [adapter.final_norm_module]


def _vision_layers(model) -> list[torch.nn.Module]:
    return list(model.model.vision_tower.encoder.layers)


class Compiled:
    def __init__(self, modules: list[torch.nn.Module], **options: Any):
        self.modules, self.options = modules, options

    def __enter__(self):
        for module in self.modules:
            module.forward = torch.compile(module.forward, **self.options)
        return self

    def __exit__(self, *exc):
        for module in self.modules:
            del module.forward


class DecodeOnly:
    """The language model compiled; the prompt call of every greedy decoding forced eager."""

    def __init__(self, model, **options: Any):
        self.model, self.options = model, options

    def __enter__(self):
        from neuronscope.trace import decode

        language = self.model.model.language_model
        language.forward = torch.compile(language.forward, **self.options)
        self.prefill = decode._StaticDecoder._prefill

        def prefill(decoder):
            with torch.compiler.set_stance("force_eager"):
                return self.prefill(decoder)

        decode._StaticDecoder._prefill = prefill
        return self

    def __exit__(self, *exc):
        from neuronscope.trace import decode

        decode._StaticDecoder._prefill = self.prefill
        del self.model.model.language_model.forward


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 6])
    parser.add_argument("--variants", nargs="+", default=["eager", "norms", "vision", "decoder"])
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--slots", type=int, nargs="*", default=[])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run (figures mean nothing)")
    args = parser.parse_args()
    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 1024)
    where = torch.device("cpu" if args.tiny else "cuda")
    model, processor = build(args.tiny, where, torch.float32 if args.tiny else torch.bfloat16)
    weights = weights_bytes(model)
    images = _images(max(args.batches + [16]), 28 if args.tiny else 336)
    rows, reference = [], {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def context(variant):
        if variant == "eager":
            return Compiled([])
        if variant == "norms":
            return Compiled(_norms(model))
        if variant == "vision":
            return Compiled(_norms(model) + _vision_layers(model))
        if variant == "decoder":
            return DecodeOnly(model)
        raise SystemExit(f"unknown variant {variant}")

    cases = [(size, None) for size in args.batches] + [(16, slots) for slots in args.slots]
    for variant in args.variants:
        with context(variant):
            for size, slots in cases:
                def call(size=size, slots=slots):
                    return streaming_call(model, processor, images[:size], args.tiny, slots=slots)
                try:
                    sync(where)
                    start = time.perf_counter()
                    first = call()
                    sync(where)
                    first_s = time.perf_counter() - start
                    call()
                    walls = []
                    if where.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    for _ in range(args.calls):
                        sync(where)
                        start = time.perf_counter()
                        result = call()
                        sync(where)
                        walls.append(time.perf_counter() - start)
                    peak = torch.cuda.max_memory_allocated() if where.type == "cuda" else 0
                    row = {"variant": variant, "batch": size, "slots": slots, "first_call_s": first_s,
                           "wall_ms_median": 1e3 * statistics.median(walls), "walls_ms": [1e3 * w for w in walls],
                           "images_per_second": size / statistics.median(walls), "peak_over_weights": peak / weights}
                    key = (size, slots)
                    if key not in reference:
                        reference[key] = first
                    base = reference[key]
                    row["tokens_equal"] = bool(torch.equal(base.generation.sequences, result.generation.sequences))
                    if row["tokens_equal"] and base.values.shape == result.values.shape:
                        row["values_max_abs_diff"] = float((base.values - result.values).abs().max())
                        row["values_max_abs"] = float(base.values.abs().max())
                        row["indices_equal_fraction"] = float((base.flat_indices == result.flat_indices).float().mean())
                except Exception as error:  # noqa: BLE001 - a probe reports
                    row = {"variant": variant, "batch": size, "slots": slots,
                           "error": f"{type(error).__name__}: {error}"[:500]}
                rows.append(row)
                print(json.dumps(row), flush=True)
                (out / "probe_compile.json").write_text(json.dumps(rows, indent=1))
                if where.type == "cuda":
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
