"""The multimodal goal's judge alone: alternating pairs of (the reference strategy on 2 images, one streaming call
of the multimodal table at a batch, its decode steps and prompt compiled, its decoding kept), as the table's
``paired`` rows run them, without the rest of the table (its compilations at five shapes cost minutes).

    python benchmarks/judge_multimodal.py OUT --batches 5 --pairs 8      # writes OUT/judge_multimodal.json
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from bench_multimodal import (
    _images,
    _timed,
    build,
    call_sizes,
    prompt_compiled,
    reference_call,
    streaming_call,
)
from common import device, main, paired, sync, weights_bytes


def run(args: argparse.Namespace) -> dict[str, Any]:
    where = torch.device("cpu") if args.tiny else device()
    model, processor = build(args.tiny, where, torch.float32 if args.tiny else torch.bfloat16)
    weights = weights_bytes(model)
    images = _images(max(args.batches), 28 if args.tiny else 336)
    count = 2
    table: dict[str, Any] = {"table": "judge_multimodal", "caption_tokens": call_sizes(args.tiny)[0],
                             "reference_images": count, "rows": []}
    for size in args.batches:
        def streaming(size=size):
            return streaming_call(model, processor, images[:size], args.tiny, slots=None, compile=True)

        with prompt_compiled(args.prompt_compiled):
            start = time.perf_counter()
            streaming()
            sync(where)
            first = time.perf_counter() - start
            streaming()  # the second call of a shape sets up its kept decoding
            alone = _timed(streaming, where, weights)
            pair = paired(lambda: [reference_call(model, processor, image, args.tiny) for image in images[:count]],
                          streaming, where, args.pairs)
        scale = size / count
        table["rows"].append({"batch": size, "prompt_compiled": args.prompt_compiled, "first_call_seconds": first,
                              **{f"alone_{k}": v for k, v in alone.items()}, **pair,
                              "over_reference_median": scale / pair["ratio_median"],
                              "over_reference_q1": scale / pair["ratio_q3"],
                              "over_reference_q3": scale / pair["ratio_q1"]})
        print(table["rows"][-1], flush=True)
    return table


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", nargs="+", type=int, default=[5])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--prompt-eager", dest="prompt_compiled", action="store_false",
                        help="the prompt's forward eager (only the decode steps compiled)")


if __name__ == "__main__":
    main("judge_multimodal", run, __doc__.splitlines()[0], _arguments)
