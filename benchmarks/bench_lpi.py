"""Exact LPI of every FFN neuron of one layer over the full vocabulary, against the FLOP floor, per log-sum-exp
kernel (plain chunked, torch.compile, Triton), at V = 32k (Llama-2-7B: d_ff 11008) and V = 128k (Llama-3-8B:
d_ff 14336).

Floor = the ``value vectors × unembedding`` product, ``2 · d_ff · d · V`` FLOPs at the device's bf16 dense peak
(989 TFLOP/s on an H200); ``matmul_only_s`` is the measured time of those products alone at the same chunking (what
any exact method must at least do); ``scoring_only_s`` the products, log-sum-exps and target columns without the
call's forward and set-up (what the call does once the activations are captured). ``forward``: the call's forward
replayed from its shape's CUDA graph (the default; the warm-up calls are the shape's eager first call and its
capture) or run eagerly (``graphs=False``). Memory: the peak above the one-layer model's weights and inputs.

    python benchmarks/bench_lpi.py OUT            # CUDA
    python benchmarks/bench_lpi.py OUT --tiny     # CPU smoke test
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from common import (
    LLAMA2_7B,
    LLAMA3_8B,
    PEAK_TFLOPS,
    TINY,
    build_llama,
    device,
    free,
    main,
    measure,
    strip,
    text_batch,
)


@torch.no_grad()
def _matmul_only(model, chunk: int, compute: torch.dtype, layer: int = 0) -> None:
    from neuronscope.attribute.log_probability_increase import FrozenReadout
    from neuronscope.models import get_adapter

    adapter = get_adapter(model)
    readout = FrozenReadout.from_adapter(adapter, None, compute)
    vectors = adapter.value_vectors(layer)
    for start in range(0, adapter.d_ff, chunk):
        readout.delta(vectors[start:start + chunk])


@torch.no_grad()  # as the LPI call scores
def _scoring_only(model, chunk: int, backend: str) -> None:
    """What the call does after its forward, for one target: per chunk the products, the log-sum-exps and the
    target column (the activations and the base logits stand in as random tensors)."""
    from neuronscope.attribute import kernels
    from neuronscope.attribute.log_probability_increase import FrozenReadout
    from neuronscope.models import get_adapter

    adapter = get_adapter(model)
    readout = FrozenReadout.from_adapter(adapter, None, torch.bfloat16)
    vectors = adapter.value_vectors(0)
    base = torch.zeros(adapter.vocab_size, device=vectors.device)
    coefficients = torch.ones(adapter.d_ff, device=vectors.device)
    for start in range(0, adapter.d_ff, chunk):
        directions = readout.delta(vectors[start:start + chunk])
        kernels.shifted_logsumexp(base, directions, coefficients[start:start + chunk], None, backend=backend)
        directions[:, 7]


def _one_shape(name: str, shape: dict, where: torch.device, tiny: bool) -> dict[str, Any]:
    from neuronscope.attribute import kernels
    from neuronscope.attribute.log_probability_increase import log_probability_increase
    from neuronscope.inputs.targets import token_targets

    dtype = torch.float32 if where.type == "cpu" else torch.bfloat16
    model = build_llama({**shape, "num_hidden_layers": 1}, dtype, where)
    ids = torch.randint(3, shape["vocab_size"], (1, 32), device=where)
    batch = text_batch(ids)
    targets = token_targets(batch, 7)
    floor = 2 * shape["intermediate_size"] * shape["hidden_size"] * shape["vocab_size"] / (PEAK_TFLOPS["bfloat16"]
                                                                                           * 1e12)
    rows: list[dict[str, Any]] = []
    reference = None
    backends = ["plain"] if where.type == "cpu" else ["plain", "compiled", "triton"]
    chunks = [64] if tiny else [1024, 2048]
    repeats = 2 if tiny else 5
    base_memory = torch.cuda.memory_allocated() if where.type == "cuda" else 0
    with torch.no_grad():  # the one-layer model's own forward, which every call runs once
        forward = measure(lambda: model(**batch.inputs), where, repeats, warmup=1)["seconds"]
    for chunk in chunks:
        matmul = measure(lambda chunk=chunk: _matmul_only(model, chunk, torch.bfloat16), where, repeats)
        for backend, graphs in [(backend, True) for backend in backends] + [(backends[-1], False)] * (len(backends) > 1):
            entry: dict[str, Any] = {"shape": name, "chunk_size": chunk, "backend": backend, "compute_dtype": "bfloat16",
                                     "forward": "graph" if graphs else "eager"}
            try:
                with kernels.use_backend(backend):  # warm-up: the shape's eager first call, then its capture
                    got = measure(lambda chunk=chunk, graphs=graphs: log_probability_increase(
                        model, batch, targets, layers=[0], chunk_size=chunk, compute_dtype=torch.bfloat16,
                        graphs=graphs).values, where, repeats, warmup=2)
            except Exception as error:  # noqa: BLE001 - a kernel that cannot build here is reported, not fatal
                rows.append({**entry, "error": f"{type(error).__name__}: {error}"[:300]})
                continue
            values = got.pop("result")
            reference = values if reference is None else reference
            entry.update(strip(got))
            scoring = measure(lambda chunk=chunk, backend=backend: _scoring_only(model, chunk, backend), where,
                              repeats)["seconds"]
            entry.update({"flop_floor_s": floor, "over_floor": got["seconds"] / floor,
                          "scoring_only_s": scoring, "scoring_only_over_floor": scoring / floor,
                          "matmul_only_s": matmul["seconds"], "over_matmul_only": got["seconds"] / matmul["seconds"],
                          "forward_s": forward,
                          "max_abs_diff_vs_plain": float((values - reference).abs().max())})
            if "peak_gib" in got:
                entry["peak_above_model_gib"] = got["peak_gib"] - base_memory / 2**30
            rows.append(entry)
    full = log_probability_increase(model, batch, targets, layers=[0], compute_dtype=torch.float32).values.flatten()
    half = log_probability_increase(model, batch, targets, layers=[0], compute_dtype=torch.bfloat16).values.flatten()
    top = min(100, full.numel())
    agreement = {"shape": name, "max_abs_error_bf16_vs_fp32_compute": float((half - full).abs().max()),
                 "max_abs_lpi_fp32": float(full.abs().max()),
                 f"top{top}_overlap_bf16_vs_fp32": len(set(full.topk(top).indices.tolist())
                                                       & set(half.topk(top).indices.tolist())) / top}
    return {"rows": rows, "agreement": agreement}


def _all_layers(model, where: torch.device) -> dict[str, Any]:
    """LPI of every neuron of every layer of the whole model (one forward for all layers), triton kernel, bf16."""
    from neuronscope.attribute import kernels
    from neuronscope.attribute.log_probability_increase import log_probability_increase
    from neuronscope.inputs.targets import token_targets

    config = model.config
    ids = torch.randint(3, config.vocab_size, (1, 32), device=where)
    batch = text_batch(ids)
    targets = token_targets(batch, 7)
    floor = (config.num_hidden_layers * 2 * config.intermediate_size * config.hidden_size * config.vocab_size
             / (PEAK_TFLOPS["bfloat16"] * 1e12))
    backend = "plain" if where.type == "cpu" else "triton"
    with kernels.use_backend(backend), torch.no_grad():
        got, eager = (measure(lambda graphs=graphs: log_probability_increase(
            model, batch, targets, chunk_size=2048, compute_dtype=torch.bfloat16, graphs=graphs).values,
            where, 3, warmup=2) for graphs in (True, False))
        forward = measure(lambda: model(**batch.inputs), where, 3, warmup=1)
    for result in (got, eager, forward):
        result.pop("result")
    return {"layers": config.num_hidden_layers, "backend": backend, "chunk_size": 2048, **strip(got),
            "flop_floor_s": floor, "over_floor": got["seconds"] / floor, "forward_s": forward["seconds"],
            "eager_forward_seconds": eager["seconds"], "eager_forward_over_floor": eager["seconds"] / floor}


def _smollm2() -> dict[str, Any]:
    """The laptop user's LPI: the real SmolLM2-135M-Instruct on the CPU in float32 (d_ff 1536, V 49152, 30 layers),
    the model's own prediction after a real prompt: one layer (best of 2) and every layer in one call; the
    products alone at the same chunking for scale."""
    from common import load_smollm2

    from neuronscope.attribute.log_probability_increase import DEFAULT_CHUNK, log_probability_increase
    from neuronscope.inputs import encode_prompts

    model, tokenizer = load_smollm2()
    config = model.config
    batch = encode_prompts(tokenizer, ["The capital of France is"])
    layer = config.num_hidden_layers // 2
    cpu = torch.device("cpu")
    one = measure(lambda: log_probability_increase(model, batch, layers=[layer]).values, cpu, 2, warmup=1)
    every = measure(lambda: log_probability_increase(model, batch).values, cpu, 1, warmup=0)
    products = measure(lambda: _matmul_only(model, DEFAULT_CHUNK, torch.float32, layer), cpu, 2)
    flops = 2 * config.intermediate_size * config.hidden_size * config.vocab_size
    for result in (one, every, products):
        result.pop("result", None)
    return {"model": "SmolLM2-135M-Instruct (real weights, float32, CPU)", "layer": layer,
            "neurons_per_layer": config.intermediate_size, "vocab_size": config.vocab_size,
            "layers": config.num_hidden_layers, "chunk_size": DEFAULT_CHUNK, "gflop_per_layer": flops / 1e9,
            "one_layer": strip(one), "every_layer": strip(every), "products_one_layer": strip(products),
            "one_layer_over_products": one["seconds"] / products["seconds"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "smollm2", False):
        return {"table": "lpi", "goal": "(CPU: the laptop user's figures; the goal is a GPU one)", "cpu": _smollm2()}
    where = torch.device("cpu") if args.tiny else device()
    shapes = {"tiny": TINY} if args.tiny else {"llama2_7b_V32k": LLAMA2_7B, "llama3_8b_V128k": LLAMA3_8B}
    rows, agreement = [], []
    for name, shape in shapes.items():
        found = _one_shape(name, shape, where, args.tiny)
        free()  # the one-layer model of this shape is gone with _one_shape's frame
        rows += found["rows"]
        agreement.append(found["agreement"])
    best = {}
    for row in rows:
        if "over_floor" in row and (row["shape"] not in best or row["over_floor"] < best[row["shape"]]["over_floor"]):
            best[row["shape"]] = row
    shared = getattr(args, "shared_model", None)  # run_all's Llama-2-7B: every layer's LPI in one call
    whole = _all_layers(shared if shared is not None else build_llama(TINY, torch.float32, where), where) \
        if shared is not None or args.tiny else None
    return {"table": "lpi", "goal": "<= 2x the FLOP floor at V = 32k and 128k, no extra memory",
            "all_layers": whole,
            "best": {name: {k: row[k] for k in ("backend", "forward", "chunk_size", "seconds", "over_floor")}
                     for name, row in best.items()},
            "rows": rows, "agreement": agreement}


if __name__ == "__main__":
    main("lpi", run, __doc__.splitlines()[0])
