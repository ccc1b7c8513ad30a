"""Where the time goes in the paths that miss their issue-19 / issue-15 goals: a torch.profiler trace of each, as
text tables (top operators by device time and by host time, device-busy time vs wall time, synchronisations).

Not a benchmark (the profiler adds overhead): it says *what* to optimise; the figures of record come from
``run_all.py``. One process, the same random bf16 shapes as the tables:

    python benchmarks/profile_paths.py OUT                    # CUDA; OUT/profile_<path>.txt + OUT/profile.json
    python benchmarks/profile_paths.py OUT --only contribution ig multimodal
    python benchmarks/profile_paths.py OUT --tiny             # CPU smoke run (figures mean nothing)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import LLAMA2_7B, TINY, build_llama, device_events, free, text_batch

PATHS = ("contribution", "ig", "lpi", "lpi_layer", "moe", "multimodal")


def _profile(name: str, function: Callable[[], Any], out: Path, cuda: bool, calls: int = 3) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    function()
    if cuda:
        torch.cuda.synchronize()
    walls = []
    for _ in range(calls):
        start = time.perf_counter()
        function()
        if cuda:
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True, with_stack=True) as prof:
        for _ in range(calls):
            function()
        if cuda:
            torch.cuda.synchronize()
    averages = prof.key_averages()
    on_device = device_events(averages)
    device_us = sum(getattr(e, "self_device_time_total", 0.0) for e in on_device) / calls
    syncs = sum(e.count for e in averages if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                          "cudaMemcpyAsync", "cudaEventSynchronize")) / calls
    kernels = sum(e.count for e in on_device) / calls
    text = [f"# {name}: wall {min(walls) * 1e3:.2f} ms (best of {calls}, unprofiled); device busy "
            f"{device_us / 1e3:.2f} ms per call; memcpy/sync calls per call {syncs:.0f}; device ops per call "
            f"{kernels:.0f}", ""]
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    text.append(averages.table(sort_by=sort, row_limit=30, max_name_column_width=70))
    text.append(averages.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70))
    grouped = prof.key_averages(group_by_input_shape=True)
    text.append(grouped.table(sort_by=sort, row_limit=20, max_name_column_width=60, max_shapes_column_width=60))
    stacks = prof.key_averages(group_by_stack_n=6)
    text.append(stacks.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=40))
    ours = sorted((e for e in averages if "neuronscope/" in e.key), key=lambda e: -e.cpu_time_total)
    text.append("neuronscope's own functions: host time per call (ms, children included), calls per call")
    text += [f"  {e.cpu_time_total / calls / 1e3:8.3f}  {e.count / calls:6.1f}  {e.key}" for e in ours[:40]]
    (out / f"profile_{name}.txt").write_text("\n".join(text))
    return {"wall_ms": min(walls) * 1e3, "device_busy_ms": device_us / 1e3, "syncs_per_call": syncs}


def _dense(args, where, out, cuda) -> dict[str, Any]:
    from neuronscope.attribute.contribution import contribution
    from neuronscope.attribute.integrated_gradients import integrated_gradients
    from neuronscope.attribute.log_probability_increase import log_probability_increase
    from neuronscope.inputs.targets import TargetSet, token_targets

    shape = TINY if args.tiny else LLAMA2_7B
    model = build_llama(shape, torch.float32 if args.tiny else torch.bfloat16, where)
    vocab, results = shape["vocab_size"], {}
    prompt, caption = (30, 5) if args.tiny else (600, 20)
    ids = torch.randint(3, vocab, (1, prompt + caption), device=where)
    batch = text_batch(ids)
    positions = torch.arange(prompt - 1, prompt + caption - 1)[None]
    targets = TargetSet(ids[:, -caption:].cpu(), positions, torch.ones(1, caption, dtype=torch.bool))
    if "contribution" in args.only:
        k = 50 if args.tiny else 10_000
        results["forward_620"] = _profile("forward_620", torch.no_grad(lambda: model(**batch.inputs)), out, cuda)
        results["contribution"] = _profile(
            "contribution", lambda: contribution(model, batch, targets, top_k=k), out, cuda)
    if "ig" in args.only:
        ig_ids = torch.randint(3, vocab, (1, 30 if args.tiny else 200), device=where)
        ig_batch = text_batch(ig_ids)
        ig_targets = token_targets(ig_batch, 7)
        for _ in range(8):  # the planner tries its sizes on the first calls
            integrated_gradients(model, ig_batch, ig_targets, steps=20)
        # eager (every kernel in the table), then the steady state (CUDA-graph replays: device busy time only)
        results["ig"] = _profile("ig", lambda: integrated_gradients(model, ig_batch, ig_targets, steps=20,
                                                                    graphs=False), out, cuda)
        results["ig_replay"] = _profile("ig_replay", lambda: integrated_gradients(model, ig_batch, ig_targets,
                                                                                  steps=20), out, cuda)
    if "lpi" in args.only:
        lpi_ids = torch.randint(3, vocab, (1, 32), device=where)
        lpi_batch = text_batch(lpi_ids)
        lpi_targets = token_targets(lpi_batch, 7)
        results["lpi"] = _profile("lpi", lambda: log_probability_increase(
            model, lpi_batch, lpi_targets, layers=[0], chunk_size=2048, compute_dtype=model.dtype), out, cuda)
    return results


def _lpi_layer(args, where, out, cuda) -> dict[str, Any]:
    """The LPI table's own set-up: a one-layer model of the Llama-2-7B width, one target, chunk 2048."""
    from neuronscope.attribute.log_probability_increase import log_probability_increase
    from neuronscope.inputs.targets import token_targets

    shape = {**(TINY if args.tiny else LLAMA2_7B), "num_hidden_layers": 1}
    model = build_llama(shape, torch.float32 if args.tiny else torch.bfloat16, where)
    batch = text_batch(torch.randint(3, shape["vocab_size"], (1, 32), device=where))
    targets = token_targets(batch, 7)
    return {"lpi_layer": _profile("lpi_layer", lambda: log_probability_increase(
        model, batch, targets, layers=[0], chunk_size=64 if args.tiny else 2048, compute_dtype=model.dtype),
        out, cuda)}


def _moe(args, where, out, cuda) -> dict[str, Any]:
    import bench_moe

    from neuronscope.attribute.moe_contribution import moe_contribution
    from neuronscope.inputs import Batch
    from neuronscope.inputs.targets import TargetSet
    from neuronscope.trace.experts import capture_experts

    results = {}
    for name in bench_moe.SHAPES:
        model = bench_moe.build(name, 2 if args.tiny else bench_moe.SHAPES[name][2], args.tiny, str(where),
                                torch.float32 if args.tiny else torch.bfloat16)
        prompt, caption = 600, 20
        ids = torch.randint(0, model.config.vocab_size, (1, prompt + caption), device=where)
        batch = Batch({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ["?"],
                      torch.tensor([prompt + caption]))
        positions = torch.arange(prompt - 1, prompt + caption - 1)[None]
        targets = TargetSet(ids[:, prompt:].cpu(), positions, torch.ones_like(positions, dtype=torch.bool))

        def capture_only(model=model, batch=batch, positions=positions):
            with torch.no_grad(), capture_experts(model, positions=positions):
                model(**batch.inputs)

        results[f"{name}_forward"] = _profile(f"moe_{name}_forward", torch.no_grad(
            lambda model=model, batch=batch: model(**batch.inputs)), out, cuda)
        results[f"{name}_capture"] = _profile(f"moe_{name}_capture", capture_only, out, cuda)
        results[f"{name}_top_k"] = _profile(f"moe_{name}_top_k", lambda model=model, batch=batch, targets=targets:
                                            moe_contribution(model, batch, targets, top_k=1000), out, cuda)
        del model
        free()
    return results


def _multimodal(args, where, out, cuda) -> dict[str, Any]:
    """The multimodal table's streaming pipeline (caption, then score) at each ``--multimodal-batch`` (tiny: 2), as
    the table runs it: where its time goes beside the decode steps' graph replays (encoding, vision tower, prefill,
    scoring)."""
    import bench_multimodal

    model, processor = bench_multimodal.build(args.tiny, where, torch.float32 if args.tiny else torch.bfloat16)
    results = {}
    for size in [2] if args.tiny else args.multimodal_batch:
        images = bench_multimodal._images(size, 28 if args.tiny else 336)

        def streaming(images=images):
            return bench_multimodal.streaming_call(model, processor, images, args.tiny)

        name = "multimodal_streaming" if size == 16 else f"multimodal_streaming_b{size}"
        results[name] = _profile(name, streaming, out, cuda, calls=2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--only", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--multimodal-batch", nargs="+", type=int, default=[16], help="images per streaming call")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available() and not args.tiny
    where = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(1)
    results = _dense(args, where, out, cuda) if {"contribution", "ig", "lpi"} & set(args.only) else {}
    free()
    if "lpi_layer" in args.only:
        results.update(_lpi_layer(args, where, out, cuda))
        free()
    if "moe" in args.only:
        results.update(_moe(args, where, out, cuda))
        free()
    if "multimodal" in args.only:
        results.update(_multimodal(args, where, out, cuda))
    (out / "profile.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
