"""The multimodal-neurons pipeline as a user runs it (``find_multimodal_neurons``, in memory, no heatmaps) on the
multimodal table's random LLaVA-1.5-7B shape: every batch's seconds, images per second of the whole run, and what
the last, smaller batch costs with and without its padding (a compiled run pads it to the batch size so that it
replays the kept compiled decoding; unpadded, it compiles a shape of its own).

Three runs over the same ``--images`` images at ``--batch``: the first compiles (its seconds kept), the second is
timed, the third is timed with the padding off (its last batch compiles).

    python benchmarks/time_pipeline.py OUT --images 12 --batch 5        # writes OUT/time_pipeline.json
    python benchmarks/time_pipeline.py OUT --tiny
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

import torch
from bench_multimodal import _images, build, call_sizes, first_words
from common import device, main, sync, weights_bytes


@contextlib.contextmanager
def _batches_timed(where: torch.device, into: list[dict[str, Any]]):
    """Within the block, each ``caption_and_score`` call of the pipeline is timed (images, seconds)."""
    from neuronscope.workflows.multimodal import pipeline

    original = pipeline.caption_and_score

    def timed(model, processor, images, **kwargs):
        sync(where)
        start = time.perf_counter()
        out = original(model, processor, images, **kwargs)
        sync(where)
        into.append({"images": len(images), "seconds": time.perf_counter() - start})
        return out

    pipeline.caption_and_score = timed
    try:
        yield
    finally:
        pipeline.caption_and_score = original


@contextlib.contextmanager
def _no_padding():
    from neuronscope.workflows.multimodal import pipeline

    original = pipeline._Padding.__init__
    pipeline._Padding.__init__ = lambda self, on: original(self, False)
    try:
        yield
    finally:
        pipeline._Padding.__init__ = original


def run(args: argparse.Namespace) -> dict[str, Any]:
    from neuronscope.workflows.multimodal import find_multimodal_neurons

    where = torch.device("cpu") if args.tiny else device()
    model, processor = build(args.tiny, where, torch.float32 if args.tiny else torch.bfloat16)
    weights = weights_bytes(model)
    images = _images(args.images, 28 if args.tiny else 336)
    tokens, n_targets, top_k = call_sizes(args.tiny)
    compile = "aot_eager" if args.tiny else True
    table: dict[str, Any] = {"table": "time_pipeline", "images": args.images, "batch_size": args.batch,
                             "caption_tokens": tokens, "top_k": top_k, "compile": str(compile), "runs": []}
    runs = (("first (compiles)", True), ("timed", True), ("timed, last batch not padded", False))[:args.runs]
    for label, padded in runs:
        batches: list[dict[str, Any]] = []
        if where.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with _batches_timed(where, batches), contextlib.nullcontext() if padded else _no_padding():
            start = time.perf_counter()
            found = find_multimodal_neurons(model, processor, images, tagger=first_words(n_targets), top_k=top_k,
                                            batch_size=args.batch, max_new_tokens=tokens, heatmaps=0,
                                            compile=compile)
            sync(where)
            seconds = time.perf_counter() - start
        row = {"run": label, "seconds": seconds, "images_per_second": args.images / seconds, "batches": batches,
               "images_captioned": found.metrics["images_captioned"], "pairs": found.metrics["pairs"]}
        if where.type == "cuda":
            row["peak_over_weights"] = torch.cuda.max_memory_allocated() / weights
        table["runs"].append(row)
        print(row, flush=True)
    return table


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3, choices=(1, 2, 3), help="the first runs only (the third "
                        "compiles the unpadded last batch: ~2 minutes on the 7B)")


if __name__ == "__main__":
    main("time_pipeline", run, __doc__.splitlines()[0], _arguments)
