"""Which lines of neuronscope make the host wait for the GPU: each path of ``profile_paths.py`` runs once under
``torch.cuda.set_sync_debug_mode("warn")``; every synchronising call is counted by the innermost neuronscope frame
(and the innermost frame of any code) that issued it.

    python benchmarks/find_syncs.py OUT            # CUDA only; OUT/syncs.json and a table on stdout
"""

from __future__ import annotations

import argparse
import collections
import json
import traceback
import warnings
from pathlib import Path

import torch
from common import LLAMA2_7B, build_llama, free, text_batch

PATHS = ("forward", "contribution", "ig", "lpi", "lpi_layer", "moe", "multimodal")


def _where() -> str:
    frames = traceback.extract_stack()[:-3]
    ours = [f for f in frames if "neuronscope" in f.filename]
    inner = frames[-1] if frames else None
    own = " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.line}" for f in ours[-1:-3:-1]) if ours else "-"
    return f"{own}  <=  {Path(inner.filename).name}:{inner.lineno}" if inner else own


def count(function) -> dict[str, int]:
    function()
    torch.cuda.synchronize()
    seen: collections.Counter[str] = collections.Counter()
    original = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        seen[_where()] += 1

    warnings.showwarning = record
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            function()
            torch.cuda.synchronize()
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = original
    return dict(seen.most_common())


def main() -> None:
    import bench_moe

    from neuronscope.attribute.contribution import contribution
    from neuronscope.attribute.integrated_gradients import integrated_gradients
    from neuronscope.attribute.log_probability_increase import log_probability_increase
    from neuronscope.attribute.moe_contribution import moe_contribution
    from neuronscope.inputs import Batch
    from neuronscope.inputs.targets import TargetSet, token_targets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--only", nargs="+", default=list(PATHS), choices=PATHS)
    args = parser.parse_args()
    where = torch.device("cuda")
    result = {}
    if {"forward", "contribution", "ig", "lpi"} & set(args.only):
        model = build_llama({**LLAMA2_7B, "num_hidden_layers": args.layers}, torch.bfloat16, where)
        ids = torch.randint(3, 32000, (1, 620), device=where)
        batch = text_batch(ids)
        positions = torch.arange(599, 619)[None]
        targets = TargetSet(ids[:, -20:].cpu(), positions, torch.ones(1, 20, dtype=torch.bool))
        short = text_batch(ids[:, :200])
        paths = {
            "forward": torch.no_grad(lambda: model(**batch.inputs)),
            "contribution": lambda: contribution(model, batch, targets, top_k=10_000),
            "ig": lambda: integrated_gradients(model, short, token_targets(short, 7), steps=20),
            "lpi": lambda: log_probability_increase(model, short, token_targets(short, 7), layers=[0],
                                                    chunk_size=2048, compute_dtype=torch.bfloat16),
        }
        result.update({name: count(path) for name, path in paths.items() if name in args.only})
        model = None  # the dense model's memory back before the next shapes
        free()
    if "lpi_layer" in args.only:  # the LPI table's own set-up: one layer, 32 tokens, one target
        model = build_llama({**LLAMA2_7B, "num_hidden_layers": 1}, torch.bfloat16, where)
        short = text_batch(torch.randint(3, 32000, (1, 32), device=where))
        for chunk in (1024, 2048):
            result[f"lpi_layer_chunk{chunk}"] = count(lambda chunk=chunk: log_probability_increase(
                model, short, token_targets(short, 7), layers=[0], chunk_size=chunk, compute_dtype=torch.bfloat16))
        model = None
        free()
    if "multimodal" in args.only:  # the multimodal table's streaming pipeline at batch 16, as profile_paths runs it
        import bench_multimodal

        model, processor = bench_multimodal.build(False, where, torch.bfloat16)
        images = bench_multimodal._images(16, 336)
        result["multimodal_streaming"] = count(lambda: bench_multimodal.streaming_call(model, processor, images, False))
        model = None
        free()
    for name in bench_moe.SHAPES if "moe" in args.only else ():
        positions = torch.arange(599, 619)[None]
        model = bench_moe.build(name, 2, False, "cuda", torch.bfloat16)
        ids = torch.randint(0, model.config.vocab_size, (1, 620), device=where)
        moe_batch = Batch({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ["?"], torch.tensor([620]))
        moe_targets = TargetSet(ids[:, 600:].cpu(), positions, torch.ones_like(positions, dtype=torch.bool))
        result[f"moe_{name}_forward"] = count(torch.no_grad(lambda m=model, b=moe_batch: m(**b.inputs)))
        result[f"moe_{name}_top_k"] = count(lambda m=model, b=moe_batch, t=moe_targets:
                                            moe_contribution(m, b, t, top_k=1000))
        model = None
        free()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "syncs.json").write_text(json.dumps(result, indent=1))
    for name, rows in result.items():
        print(f"## {name}: {sum(rows.values())} synchronisations")
        for where_, n in rows.items():
            print(f"  {n:5d}  {where_}")


if __name__ == "__main__":
    main()
