"""Time knowledge-neuron integrated gradients, packed path vs plain path, on one prompt; prints JSON.

The model is a random Llama with Llama-2-7B's shapes (d = 4096, d_ff = 11008, 32 heads, V = 32000; ``--layers``
decoder layers) built on the device in bf16 (no download). Both paths score every neuron of every layer for one
target at the last position; the JSON gives seconds per prompt, the speed-up, the peak GPU memory and how far the
two paths' scores are apart (relative to the largest score: rounding only, in bf16).

    python benchmarks/bench_integrated_gradients.py --layers 32 --steps 20     # CUDA, bf16
    python benchmarks/bench_integrated_gradients.py --tiny                     # CPU smoke run on a tiny model
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import transformers as T

from neuronscope.attribute.gradient_x_activation import gradient_x_activation
from neuronscope.attribute.integrated_gradients import integrated_gradients
from neuronscope.inputs.targets import token_targets
from neuronscope.inputs import Batch

SEVEN_B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
               vocab_size=32000)
TINY = dict(hidden_size=32, intermediate_size=88, num_attention_heads=4, num_key_value_heads=4, vocab_size=256)


def build(shapes: dict, layers: int, device: str, dtype: torch.dtype) -> torch.nn.Module:
    config = T.LlamaConfig(**shapes, num_hidden_layers=layers, max_position_embeddings=1024)
    with torch.device(device):
        model = T.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def timed(function, device: str, repeats: int) -> tuple[float, object]:
    result = function()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on a tiny model")
    parser.add_argument("--layers", type=int, default=32, help="decoder layers of the random model")
    parser.add_argument("--steps", type=int, default=20, help="IG steps m")
    parser.add_argument("--grid", default="dai", choices=["dai", "linspace"])
    parser.add_argument("--length", type=int, default=32, help="prompt length")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per packed forward")
    parser.add_argument("--plain-batch-size", type=int, default=None, help="rows per plain forward (default: m)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up (min is reported)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="model dtype on CUDA (float32 shows that packed and plain differ by rounding only)")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of one packed run")
    parser.add_argument("--skip-plain", action="store_true", help="time the packed path only")
    args = parser.parse_args()

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else getattr(torch, args.dtype)
    shapes = TINY if args.tiny else SEVEN_B
    layers = 2 if args.tiny else args.layers
    torch.manual_seed(0)
    model = build(shapes, layers, device, dtype)
    ids = torch.randint(3, shapes["vocab_size"], (1, args.length), device=device)
    batch = Batch({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ["random"], torch.tensor([args.length]))
    targets = token_targets(batch, 7)
    options = dict(steps=args.steps, grid=args.grid)
    report: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype),
                    "layers": layers, "d_ff": shapes["intermediate_size"], "steps": args.steps, "grid": args.grid,
                    "length": args.length, "batch_size": args.batch_size, "torch": torch.__version__,
                    "transformers": T.__version__}

    def run_packed():
        return integrated_gradients(model, batch, targets, batch_size=args.batch_size, **options).values

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    report["packed_s"], packed = timed(run_packed, device, args.repeats)
    if device == "cuda":
        report["packed_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    report["packed_rows_per_s"] = layers * args.steps / report["packed_s"]
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=activities) as prof:
            run_packed()
        sort = "cuda_time_total" if device == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=25), file=sys.stderr)
    if not args.skip_plain:
        plain_batch = args.plain_batch_size or args.steps

        def run_plain():
            return integrated_gradients(model, batch, targets, batch_size=plain_batch, method="plain",
                                        **options).values

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        report["plain_s"], plain = timed(run_plain, device, max(1, args.repeats - 1))
        if device == "cuda":
            report["plain_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        report["speedup"] = report["plain_s"] / report["packed_s"]
        scale = float(plain.abs().max())
        report["max_abs_diff_over_max"] = float((packed - plain).abs().max()) / scale if scale else 0.0
        top_packed = set(packed.flatten().topk(100).indices.tolist())
        top_plain = set(plain.flatten().topk(100).indices.tolist())
        report["top100_overlap"] = len(top_packed & top_plain) / 100
    report["gradient_x_activation_s"], _ = timed(lambda: gradient_x_activation(model, batch, targets).values,
                                                 device, args.repeats)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
