"""Time the contribution score (Pan et al.) and gradient × activation against a plain forward; prints JSON.

The model is a random Llama with Llama-2-7B's shapes (d = 4096, d_ff = 11008, 32 heads, V = 32000, ``--layers``
decoder layers) built on the device in bf16 (no download). Contribution scores all L × d_ff neurons for one target
per prompt (``W_out^T u_t`` for the needed targets only, never the d_ff × V table). The JSON gives seconds per batch,
the ratios to a plain forward of the same batch, and peak GPU memory of each.

    python benchmarks/bench_contribution.py --layers 32 --batch 8 --length 128     # CUDA, bf16
    python benchmarks/bench_contribution.py --tiny                                 # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import transformers as T

from neuronscope.attribute.contribution import contribution
from neuronscope.inputs.targets import token_targets
from neuronscope.inputs import Batch

SEVEN_B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
               vocab_size=32000)
TINY = dict(hidden_size=32, intermediate_size=88, num_attention_heads=4, num_key_value_heads=4, vocab_size=256)


def timed(function, device: str, repeats: int) -> tuple[float, float]:
    """Best wall time of ``repeats`` calls after a warm-up, and the peak memory (GiB) of one call."""
    function()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    return min(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on a tiny model")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    shapes = TINY if args.tiny else SEVEN_B
    config = T.LlamaConfig(**shapes, num_hidden_layers=2 if args.tiny else args.layers, max_position_embeddings=2048)
    torch.manual_seed(0)
    with torch.device(device):
        model = T.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    ids = torch.randint(0, config.vocab_size, (args.batch, args.length), device=device)
    batch = Batch({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ["?"] * args.batch,
                  torch.full((args.batch,), args.length))
    targets = token_targets(batch, torch.randint(0, config.vocab_size, (args.batch,)).tolist())

    @torch.no_grad()
    def forward() -> None:
        model(**batch.inputs)

    def score() -> None:
        contribution(model, batch, targets)

    def score_act() -> None:
        contribution(model, batch, targets, site="act")

    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype),
               "layers": config.num_hidden_layers, "batch": args.batch, "length": args.length}
    for name, function in (("forward", forward), ("contribution", score), ("contribution_act", score_act)):
        seconds, peak = timed(function, device, args.repeats)
        results[name] = {"seconds": round(seconds, 5), "peak_gib": round(peak, 2)}
    for name in ("contribution", "contribution_act"):
        results[f"{name}_over_forward"] = round(results[name]["seconds"] / results["forward"]["seconds"], 3)
    try:
        from neuronscope.attribute.gradient_x_activation import gradient_x_activation

        seconds, peak = timed(lambda: gradient_x_activation(model, batch, targets), device, args.repeats)
        results["gradient_x_activation"] = {"seconds": round(seconds, 5), "peak_gib": round(peak, 2)}
        results["gradient_x_activation_over_forward"] = round(seconds / results["forward"]["seconds"], 3)
    except ImportError:
        pass
    print(json.dumps(results))


if __name__ == "__main__":
    main()
