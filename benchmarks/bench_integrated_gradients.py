"""Knowledge-neuron IG (m = 20, every layer, one T = 200 prompt) against qrneuron's per-layer loop.

The loop (``method="plain"``, ``batch_size = m``): per layer, the m scaled copies of the whole prompt in one batch,
forward and backward; that is what qrneuron's released code does layer by layer. Ours: ``method="sequence"`` (the
prefix once, all 640 (layer, step) rows as query tokens of one sequence under a 4-D mask, one backward), at the
planned row batch and at fixed ones (to show that the planner picks the fastest), and the previous ``"packed"``
path. The planned rows are timed in steady state (CUDA-graph replays on a GPU), with the shape's first (eager) and
second (captured) calls, every call eager (``graphs=False``), and with a chunk budget of the free memory instead of
the default cap at 30 % of the weights. Peak memory over the weights. Agreement: bf16 (the benchmarked run) and fp32 on a 4-layer model of the same
width (TF32 off), as the largest difference over the largest score, and top-100 overlap.

    python benchmarks/bench_integrated_gradients.py OUT
    python benchmarks/bench_integrated_gradients.py OUT --tiny
    python benchmarks/bench_integrated_gradients.py OUT --smollm2      # CPU figures, 1 thread
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from common import (
    LLAMA2_7B,
    TINY,
    build_llama,
    device,
    free,
    graphed,
    load_smollm2,
    main,
    measure,
    strip,
    text_batch,
    weights_bytes,
)


def _agreement(fast: torch.Tensor, plain: torch.Tensor) -> dict[str, float]:
    scale = float(plain.abs().max())
    top = min(100, plain.numel())
    overlap = len(set(fast.flatten().topk(top).indices.tolist()) & set(plain.flatten().topk(top).indices.tolist()))
    return {"max_abs_diff_over_max": float((fast - plain).abs().max()) / scale if scale else 0.0,
            f"top{top}_overlap": overlap / top}


def table(model, where: torch.device, length: int, steps: int, repeats: int, sweep: list[int],
          loop_layers: list[int] | None = None) -> dict[str, Any]:
    from neuronscope.attribute.integrated_gradients import integrated_gradients
    from neuronscope.inputs.targets import token_targets

    weights = weights_bytes(model)
    ids = torch.randint(3, model.config.vocab_size, (1, length), device=where)
    batch = text_batch(ids)
    targets = token_targets(batch, 7)
    rows: dict[str, Any] = {"length": length, "steps": steps, "layers": model.config.num_hidden_layers,
                            "rows": steps * model.config.num_hidden_layers}

    def ig(**options):
        return lambda: integrated_gradients(model, batch, targets, steps=steps, **options).values

    # one warm-up call on a GPU: the loop's first call grows the allocator's pool to 4.5x the weights (seconds of
    # cudaMalloc that a run over many prompts pays once)
    loop = measure(ig(method="plain", batch_size=steps, layers=loop_layers), where, repeats=1,
                   warmup=1 if where.type == "cuda" else 0, weights=weights)
    plain = loop.pop("result")
    if loop_layers is not None:  # the loop is linear in layers: timed on some, scaled to all (said so)
        loop["timed_layers"] = len(loop_layers)
        loop["seconds"] *= model.config.num_hidden_layers / len(loop_layers)
        loop["median_seconds"] = loop["seconds"]
    rows["qrneuron_loop"] = strip(loop)
    from neuronscope.attribute.prefix_rows import planner_for

    planned = ig(method="sequence")
    first = measure(planned, where, repeats=1, warmup=0, weights=weights)  # this call starts the size trials
    for _ in range(8):  # the planner tries each size on the first calls; then it keeps the fastest
        if not any(n < 2 for n in planner_for(model).trials.values()):
            break
        planned()
    eager = strip(measure(ig(method="sequence", graphs=False), where, repeats, warmup=0, weights=weights))
    eager["speedup_over_loop"] = loop["seconds"] / eager["seconds"]
    rows["sequence_planned_eager"] = eager
    fast = graphed(planned, where, repeats, weights)
    fast_scores = fast.pop("result")
    rows["sequence_planned"] = strip(fast)
    rows["sequence_planned"]["speedup_over_loop"] = loop["seconds"] / fast["seconds"]
    planner = planner_for(model)
    rows["sequence_planned"]["chunks"] = planner.chunks(rows["rows"], length - 1, where)
    rows["sequence_planned"]["rows_per_second_tried"] = {str(k): round(v, 1) for k, v in planner.speeds.items()}
    rows["sequence_planned"]["planner"] = {"correction": planner.correction, "budget_gib": planner.available(where)
                                           / 2**30, "observed": planner.history[-4:]}
    rows["sequence_planned"]["first_call_seconds"] = first["seconds"]
    from neuronscope.attribute.ig_graphs import release_graphs

    if where.type == "cuda":  # without the default cap of a chunk at 30 % of the weights: the free memory
        release_graphs(model)
        budget = 0.9 * torch.cuda.mem_get_info(where)[0]
        uncapped = ig(method="sequence", memory_budget=budget)
        for _ in range(8):
            if planner_for(model, budget=budget).settled(rows["rows"], length - 1, where):
                break
            uncapped()
        entry = graphed(uncapped, where, repeats, weights)
        entry.pop("result")
        entry = strip(entry)
        entry["chunks"] = planner_for(model, budget=budget).chunks(rows["rows"], length - 1, where)
        entry["speedup_over_loop"] = loop["seconds"] / entry["seconds"]
        entry["memory_budget_gib"] = budget / 2**30
        rows["sequence_planned_free_memory"] = entry
    compare = fast_scores if loop_layers is None else fast_scores[:, :, loop_layers]
    rows["agreement_with_loop"] = _agreement(compare, plain)
    rows["sequence_fixed_batch"] = []
    for size in sweep:
        release_graphs(model)
        try:
            entry = strip(measure(ig(method="sequence", batch_size=size), where, repeats, weights=weights))
        except Exception as error:  # noqa: BLE001 - an out-of-memory size is reported
            entry = {"error": f"{type(error).__name__}: {error}"[:200]}
        rows["sequence_fixed_batch"].append({"batch_size": size, **entry})
        free()
    release_graphs(model)
    try:
        packed = measure(ig(method="packed"), where, 1, weights=weights)
        packed.pop("result")
        rows["packed_previous_default"] = strip(packed)
    except Exception as error:  # noqa: BLE001
        rows["packed_previous_default"] = {"error": f"{type(error).__name__}: {error}"[:200]}
    free()
    return rows


def fp32_agreement(where: torch.device, width: dict, length: int, steps: int) -> dict[str, Any]:
    """Sequence vs the loop in float32 (TF32 off) on a 4-layer model of the benchmark's width."""
    from neuronscope.attribute.integrated_gradients import integrated_gradients
    from neuronscope.inputs.targets import token_targets

    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        model = build_llama({**width, "num_hidden_layers": 4}, torch.float32, where, seed=1)
        ids = torch.randint(3, width["vocab_size"], (1, length), device=where)
        batch = text_batch(ids)
        targets = token_targets(batch, 7)
        start = time.perf_counter()
        fast = integrated_gradients(model, batch, targets, steps=steps).values
        plain = integrated_gradients(model, batch, targets, steps=steps, method="plain", batch_size=steps).values
        out = {"layers": 4, "length": length, "steps": steps, **_agreement(fast, plain),
               "seconds_both": time.perf_counter() - start}
        del model
        free()
        return out
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def run(args: argparse.Namespace) -> dict[str, Any]:
    where = torch.device("cpu") if args.tiny or args.smollm2 else device()
    if args.smollm2:
        model, _ = load_smollm2()
        # repeats 3: the first calls try 600, 300 and 150 rows per chunk, the best of three runs the settled choice
        rows = table(model, where, length=32, steps=20, repeats=3, sweep=[150, 300], loop_layers=[0, 10, 20])
        shape, agreement = "SmolLM2-135M-Instruct (real weights, float32)", None
    elif args.tiny:
        model = build_llama(TINY, torch.float32, where)
        rows = table(model, where, length=12, steps=4, repeats=1, sweep=[4])
        shape, agreement = "tiny", fp32_agreement(where, TINY, 12, 4)
    else:
        model = getattr(args, "shared_model", None) or build_llama(LLAMA2_7B, torch.bfloat16, where)
        rows = table(model, where, length=200, steps=20, repeats=3, sweep=[160, 320, 640])
        shape, agreement = "Llama-2-7B (random, bf16)", fp32_agreement(where, LLAMA2_7B, 200, 20)
    return {"table": "integrated_gradients", "model": shape,
            "goal": ">= 100x the loop, peak <= 1.3x weights, fp32 scores within 1e-3 relative", "rows": rows,
            "fp32_agreement": agreement}


if __name__ == "__main__":
    main("integrated_gradients", run, __doc__.splitlines()[0])
