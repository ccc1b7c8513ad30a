"""Time the contribution score over all expert neurons of an MoE model against a teacher-forced forward; JSON.

Two random bf16 models built on the GPU (no download), at full depth (``--layers`` for fewer):

- ``mixtral_8x7b``: Mixtral-8x7B's shapes (d = 4096, 8 experts of 14336 neurons, top-2, 32 heads / 8 KV heads,
  V = 32000);
- ``qwen3_30b_a3b``: Qwen3-30B-A3B's shapes (d = 2048, 128 experts of 768 neurons, top-8, 32 heads / 4 KV heads,
  head_dim 128, V = 151936).

Input: a ``--prompt``-token prompt and a ``--caption``-token caption, teacher forced (one sequence). The forward is
``model(input_ids)`` on it; the contribution scores every neuron of every expert of every layer (``E · f · L``
scores per target, the unrouted ones 0) for each caption token at the position that produces it (``--caption``
targets), on the GPU, then moves the scores to the CPU. Also timed: the capture alone (the forward with the
expert-neuron capture at those positions). The JSON gives the best seconds of ``--repeats`` runs after a warm-up,
the ratios to the forward (in one run), the peak GPU memory of each (``torch.cuda.max_memory_allocated``) and the
weights' size, and which experts implementation ran and whether activations were read from it ("intercepted") or
recomputed.

    python benchmarks/bench_moe.py                          # CUDA, bf16, both models
    python benchmarks/bench_moe.py --models qwen3_30b_a3b --layers 12
    python benchmarks/bench_moe.py --tiny                   # CPU smoke run on tiny shapes
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import transformers as T
from common import free, paired

from neuronscope.attribute.moe_contribution import moe_contribution
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models import get_adapter
from neuronscope.trace.expert_hooks import ExpertHooks
from neuronscope.trace.experts import capture_experts
from neuronscope.trace.hooks import HookSet

SHAPES = {
    "mixtral_8x7b": (T.MixtralConfig, dict(hidden_size=4096, intermediate_size=14336, num_local_experts=8,
                                           num_experts_per_tok=2, num_attention_heads=32, num_key_value_heads=8,
                                           vocab_size=32000), 32),
    "qwen3_30b_a3b": (T.Qwen3MoeConfig, dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                                             num_experts=128, num_experts_per_tok=8, num_attention_heads=32,
                                             num_key_value_heads=4, head_dim=128, vocab_size=151936,
                                             norm_topk_prob=True), 48),
}
TINY = {
    "mixtral_8x7b": dict(hidden_size=64, intermediate_size=224, num_local_experts=8, num_experts_per_tok=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=512),
    "qwen3_30b_a3b": dict(hidden_size=32, intermediate_size=96, moe_intermediate_size=12, num_experts=16,
                          num_experts_per_tok=4, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                          vocab_size=512, norm_topk_prob=True),
}


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


def build(name: str, layers: int, tiny: bool, device: str, dtype: torch.dtype) -> torch.nn.Module:
    config_class, shapes, _ = SHAPES[name]
    config = config_class(**(TINY[name] if tiny else shapes), num_hidden_layers=layers, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(device):
        return T.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def bench(name: str, args: argparse.Namespace, device: str, dtype: torch.dtype,
          model: torch.nn.Module | None = None) -> dict:
    layers = args.layers or (2 if args.tiny else SHAPES[name][2])
    model = build(name, layers, args.tiny, device, dtype) if model is None else model
    layers = model.config.num_hidden_layers
    adapter = get_adapter(model)
    vocab = model.config.vocab_size
    length = args.prompt + args.caption
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (1, length), generator=generator).to(device)
    batch = Batch({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ["?"], torch.tensor([length]))
    positions = torch.arange(args.prompt - 1, length - 1)[None]  # the position that produces each caption token
    targets = TargetSet(ids[:, args.prompt:].cpu(), positions, torch.ones_like(positions, dtype=torch.bool),
                        [["t"] * args.caption])
    sources: list[str] = []

    @torch.no_grad()
    def forward() -> None:
        model(**batch.inputs)

    @torch.no_grad()
    def capture_only() -> None:
        with capture_experts(model, positions=positions):
            model(**batch.inputs)

    def score() -> None:
        moe_contribution(model, batch, targets)

    def score_top_k() -> None:  # selected on the device: only the 20 x 1000 best and the bias terms reach the host
        moe_contribution(model, batch, targets, top_k=1000)

    with HookSet(adapter) as hooks:  # which path read the activations (one forward)
        ExpertHooks(adapter, hooks).on_experts(sorted(adapter.moe.layers)[0], lambda call: sources.append(call.source))
        forward()
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    result = {"layers": layers, "tokens": length, "targets": args.caption, "weights_gib": round(weights, 2),
              "n_neurons_scored_per_target": adapter.moe.layout.n_neurons,
              "experts_implementation": model.config._experts_implementation, "activations": sources[0]}
    for key, function in (("forward", forward), ("capture", capture_only), ("contribution", score),
                          ("contribution_top_k", score_top_k)):
        seconds, peak = timed(function, device, args.repeats)
        result[key] = {"seconds": round(seconds, 5), "peak_gib": round(peak, 2)}
        if device == "cuda":
            result[key]["peak_over_weights"] = round(peak / weights, 3)
    for key in ("capture", "contribution", "contribution_top_k"):
        result[f"{key}_over_forward"] = round(result[key]["seconds"] / result["forward"]["seconds"], 3)
    result["contribution_top_k_over_forward_paired"] = paired(forward, score_top_k, device, args.repeats * 3)
    return result


def run(args: argparse.Namespace) -> dict:
    """The ``moe`` table of ``benchmarks/run_all.py``: both shapes at full depth, each built once and timed with a
    20-token caption after prompts of 12, 200 and 600 tokens (32, 220 and 620 tokens in all); on the GPU (or tiny
    on the CPU)."""
    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    table: dict = {"table": "moe", "goal": "contribution of every expert neuron <= 1.3x a forward",
                   "dtype": str(dtype)}
    for name in SHAPES:
        model = build(name, 2 if args.tiny else SHAPES[name][2], args.tiny, device, dtype)
        for prompt in (12, 200, 600):
            options = argparse.Namespace(tiny=args.tiny, layers=None, prompt=prompt, caption=20, repeats=5)
            key = name if prompt == 12 else f"{name}_{prompt + 20}"
            table[key] = bench(name, options, device, dtype, model)
        del model
        free()  # the adapter and the hooks hold cycles: collected before the next model is built
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on tiny shapes")
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: all, 32 / 48; --tiny: 2)")
    parser.add_argument("--prompt", type=int, default=12, help="prompt tokens before the caption")
    parser.add_argument("--caption", type=int, default=20, help="caption tokens (targets)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    if device == "cpu":
        torch.set_num_threads(1)
    dtype = torch.float32 if args.tiny else torch.bfloat16
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype),
               "torch": torch.__version__, "transformers": T.__version__}
    for name in args.models:
        results[name] = bench(name, args, device, dtype)
        if device == "cuda":  # the model is gone with bench's frame
            torch.cuda.empty_cache()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
