"""The multimodal goal's judge alone: alternating pairs of (the reference strategy on 2 images, one streaming call
of the multimodal table at a batch, its decode steps and prompt compiled, its decoding kept), as the table's
``paired`` rows run them, without the rest of the table (its compilations at five shapes cost minutes). Then the
same call once more with the prompt's image encoding compiled too (``images_compiled_alone_seconds``:
``compiled_decoder.COMPILE_IMAGES``).

    python benchmarks/judge_multimodal.py OUT --batches 5 --pairs 8      # writes OUT/judge_multimodal.json
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from bench_multimodal import (
    _images,
    build,
    call_sizes,
    first_then_timed,
    over_reference,
    prompt_compiled,
    reference_call,
    streaming_call,
)
from common import device, main, paired, weights_bytes


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
            alone = first_then_timed(streaming, where, weights)
            pair = paired(lambda: [reference_call(model, processor, image, args.tiny) for image in images[:count]],
                          streaming, where, args.pairs)
        table["rows"].append({"batch": size, "prompt_compiled": args.prompt_compiled,
                              "first_call_seconds": alone.pop("first_call_seconds"),
                              **{f"alone_{k}": v for k, v in alone.items()}, **pair,
                              **over_reference(pair, size, count)})
        if args.prompt_compiled:  # the same call with the image encoding compiled too, in this run (it compiles)
            with prompt_compiled(True, images=True):
                other = first_then_timed(streaming, where, weights)
            table["rows"][-1]["images_compiled_alone_seconds"] = other["seconds"]
            table["rows"][-1]["images_compiled_alone_peak_over_weights"] = other.get("peak_over_weights")
        print(table["rows"][-1], flush=True)
    return table


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", nargs="+", type=int, default=[5])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--prompt-eager", dest="prompt_compiled", action="store_false",
                        help="the prompt's forward eager (only the decode steps compiled)")


if __name__ == "__main__":
    main("judge_multimodal", run, __doc__.splitlines()[0], _arguments)
