"""Time exact LPI of all FFN neurons of one layer (and of all heads) against the FLOP floor; prints JSON.

The model is a random one-layer Llama with Llama-2-7B's shapes (d = 4096, d_ff = 11008, 32 heads, V = 32000) built
on the device (no download). The floor is the ``value vectors × unembedding`` product, ``2 · d_ff · d · V`` FLOPs
per layer, at the device's dense peak for the compute dtype (given with ``--peak-tflops``; H100 SXM defaults).

    python benchmarks/bench_lpi.py                      # CUDA, bf16 model, float32 and bfloat16 compute
    python benchmarks/bench_lpi.py --tiny               # CPU smoke run on a tiny model
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import transformers as T

from neuronscope.attribute.log_probability_increase import (
    head_log_probability_increase,
    log_probability_increase,
)
from neuronscope.inputs.targets import token_targets
from neuronscope.inputs import Batch

SEVEN_B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
               vocab_size=32000, num_hidden_layers=1)
TINY = dict(hidden_size=32, intermediate_size=88, num_attention_heads=4, num_key_value_heads=4, vocab_size=256,
            num_hidden_layers=1)
# Dense peaks of an H100 SXM (TFLOP/s): TF32 tensor cores for float32 with TF32 on, plain float32 without.
PEAKS = {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0, "tf32": 494.0}


def build(shapes: dict, device: str, dtype: torch.dtype) -> torch.nn.Module:
    config = T.LlamaConfig(**shapes, max_position_embeddings=512)
    with torch.device(device):
        model = T.LlamaForCausalLM(config).to(dtype)
    return model.eval()


def timed(function, device: str, repeats: int) -> float:
    function()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on a tiny model")
    parser.add_argument("--rows", type=int, default=1, help="prompts (one target each)")
    parser.add_argument("--length", type=int, default=32, help="prompt length")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tf32", action="store_true", help="allow TF32 for float32 matmuls")
    args = parser.parse_args()

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    shapes = TINY if args.tiny else SEVEN_B
    model = build(shapes, device, torch.float32 if device == "cpu" else torch.bfloat16)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    ids = torch.randint(3, shapes["vocab_size"], (args.rows, args.length), device=device)
    batch = Batch({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ["x"] * args.rows,
                  torch.full((args.rows,), args.length))
    targets = token_targets(batch, torch.randint(3, shapes["vocab_size"], (args.rows,)).tolist())
    floor_flops = 2 * shapes["intermediate_size"] * shapes["hidden_size"] * shapes["vocab_size"]

    results = []
    for compute in (torch.float32, torch.bfloat16):
        name = str(compute).removeprefix("torch.")
        peak = PEAKS["tf32" if compute == torch.float32 and args.tf32 else name]
        reference = None
        for chunk in args.chunks:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = timed(lambda chunk=chunk, compute=compute: log_probability_increase(
                model, batch, targets, layers=[0], chunk_size=chunk, compute_dtype=compute), device, args.repeats)
            scores = log_probability_increase(model, batch, targets, layers=[0], chunk_size=chunk,
                                              compute_dtype=compute).values
            reference = scores if reference is None else reference
            floor = floor_flops / (peak * 1e12)
            results.append({
                "unit": "neuron", "compute_dtype": name, "chunk_size": chunk, "rows": args.rows,
                "seconds": round(seconds, 5), "flop_floor_seconds": round(floor, 5),
                "fraction_of_floor": round(floor / seconds, 4),
                "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if device == "cuda" else None,
                "max_abs_difference_vs_first_chunk": float((scores - reference).abs().max()),
            })
        seconds = timed(lambda compute=compute: head_log_probability_increase(
            model, batch, targets, layers=[0], compute_dtype=compute), device, args.repeats)
        results.append({"unit": "head", "compute_dtype": name, "rows": args.rows, "seconds": round(seconds, 5)})
    full = log_probability_increase(model, batch, targets, layers=[0]).values.flatten()
    half = log_probability_increase(model, batch, targets, layers=[0], compute_dtype=torch.bfloat16).values.flatten()
    top = min(100, full.numel())
    error = {"max_abs_error_bf16_vs_fp32": float((half - full).abs().max()),
             "max_abs_lpi_fp32": float(full.abs().max()),
             f"top{top}_overlap_bf16_vs_fp32": len(set(full.topk(top).indices.tolist())
                                                   & set(half.topk(top).indices.tolist()))}
    print(json.dumps({"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "shapes": shapes,
                      "model_dtype": "float32" if device == "cpu" else "bfloat16", "tf32": args.tf32,
                      "results": results, "accuracy": error}, indent=2))


if __name__ == "__main__":
    main()
