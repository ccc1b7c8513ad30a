"""Are repeated calls bit-identical on the GPU? (a probe: where a difference between two identical calls starts)

On the random LLaVA-1.5-7B shape in bf16, the same batch of images, each stage called ``--calls`` times:

- ``forward``: one full forward of the prompt (logits of every position), eager;
- ``generate``: transformers' own greedy ``model.generate``;
- ``greedy graphs=False`` / ``greedy graphs=True``: :func:`neuronscope.trace.decode.greedy_generate`;
- ``streaming``: the table's streaming call, batched decoding.

Each row says whether every call equals the first (bitwise) and, where not, the largest difference or the first
differing step.

    python benchmarks/probe_determinism.py OUT --batch 4
    CUBLAS_WORKSPACE_CONFIG=:4096:8 python benchmarks/probe_determinism.py OUT --setting deterministic
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from bench_multimodal import PREFIX, PROMPT, _images, build, streaming_call
from common import sync

SETTINGS = ("default", "no_cudnn_sdp", "math_sdp", "deterministic", "reproducible")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--setting", default="default", choices=SETTINGS,
                        help="default; no_cudnn_sdp: sdpa without cuDNN's kernel; math_sdp: sdpa's math kernel only; "
                             "deterministic: torch.use_deterministic_algorithms(True) (export "
                             "CUBLAS_WORKSPACE_CONFIG=:4096:8 before the process starts); reproducible: every stage "
                             "inside neuronscope.trace.reproducible.reproducible()")
    parser.add_argument("--moe", default=None, help="a bench_moe shape (mixtral_8x7b, qwen3_30b_a3b) with 4 layers "
                                                    "instead of LLaVA: forward, generate and greedy decoding only")
    parser.add_argument("--generate-only", action="store_true", help="the forward and generate stages only")
    args = parser.parse_args()
    if args.setting == "no_cudnn_sdp":
        torch.backends.cuda.enable_cudnn_sdp(False)
    elif args.setting == "math_sdp":
        for name in ("cudnn", "flash", "mem_efficient"):
            getattr(torch.backends.cuda, f"enable_{name}_sdp")(False)
    elif args.setting == "deterministic":
        torch.use_deterministic_algorithms(True)
    from neuronscope.trace.reproducible import reproducible

    with reproducible(args.setting == "reproducible"):
        if args.moe:
            moe(args)
        else:
            stages(args)


def moe(args: argparse.Namespace) -> None:
    import bench_moe

    from neuronscope.inputs.batch import Batch
    from neuronscope.trace.decode import greedy_generate

    model = bench_moe.build(args.moe, 4, args.tiny, "cpu" if args.tiny else "cuda", torch.float32 if args.tiny
                            else torch.bfloat16)
    where = next(model.parameters()).device
    ids = torch.randint(3, model.config.vocab_size, (args.batch, 64), generator=torch.Generator().manual_seed(0))
    ids = ids.to(where)
    mask = torch.ones_like(ids)
    batch = Batch({"input_ids": ids, "attention_mask": mask}, ["?"] * args.batch, mask.sum(-1).cpu())
    rows = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def record(stage, results):
        row = {"stage": stage, "model": args.moe, "setting": args.setting, "calls": len(results),
               "all_equal": all(torch.equal(r, results[0]) for r in results[1:])}
        if results[0].is_floating_point():
            row["max_abs_diff"] = [float((r.float() - results[0].float()).abs().max()) for r in results[1:]]
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / f"probe_determinism_{args.moe}_{args.setting}.json").write_text(json.dumps(rows, indent=1))

    with torch.no_grad():
        record("forward", [model(input_ids=ids).logits[:, -8:].clone() for _ in range(args.calls)])
        record("generate", [model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, min_new_tokens=20,
                                           do_sample=False, pad_token_id=0) for _ in range(args.calls)])
    class Ids:  # a stand-in tokenizer: the probe compares token ids
        pad_token_id, eos_token_id = 0, None

        def batch_decode(self, rows, skip_special_tokens=True):
            return [" ".join(map(str, row.tolist())) for row in rows]

    record("greedy", [greedy_generate(model, Ids(), batch, 20, min_new_tokens=20).sequences
                      for _ in range(args.calls)])


def stages(args: argparse.Namespace) -> None:
    from neuronscope.inputs import encode_images
    from neuronscope.trace.decode import greedy_generate

    where = torch.device("cpu" if args.tiny else "cuda")
    model, processor = build(args.tiny, where, torch.float32 if args.tiny else torch.bfloat16)
    images = _images(args.batch, 28 if args.tiny else 336)
    tokens = 4 if args.tiny else 20
    batch = encode_images(processor, images, PROMPT, assistant_prefix=PREFIX)
    moved = batch.to(where)
    inputs = {k: (v.to(model.dtype) if v.is_floating_point() else v) for k, v in moved.inputs.items()}
    rows = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def record(stage, results):
        first = results[0]
        row = {"stage": stage, "setting": args.setting, "calls": len(results)}
        if first.is_floating_point():
            diffs = [float((r.float() - first.float()).abs().max()) for r in results[1:]]
            row.update(all_equal=all(torch.equal(r, first) for r in results[1:]), max_abs_diff=diffs,
                       max_abs=float(first.float().abs().max()))
        else:
            row["all_equal"] = all(torch.equal(r, first) for r in results[1:])
            steps = []
            for r in results[1:]:
                differ = (r != first).any(0).nonzero().flatten() if r.shape == first.shape else torch.tensor([-1])
                steps.append(int(differ[0]) - moved.seq_len if differ.numel() else None)
            row["first_differing_step"] = steps
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / f"probe_determinism_{args.setting}.json").write_text(json.dumps(rows, indent=1))

    with torch.no_grad():
        record("forward", [model(**inputs).logits[:, -8:].clone() for _ in range(args.calls)])
        record("forward, one image at a time",
               [torch.cat([model(**{k: v[i:i + 1] for k, v in inputs.items()}).logits[:, -8:] for i in
                           range(args.batch)]) for _ in range(args.calls)])
        generated = [model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                    suppress_tokens=[4]) for _ in range(args.calls)]
        record("generate", generated)
    if args.generate_only:
        return
    for graphs in ((False, True) if where.type == "cuda" else (False,)):
        record(f"greedy graphs={graphs}", [greedy_generate(model, processor, batch, tokens, graphs=graphs,
                                                           min_new_tokens=tokens, suppress_tokens=[4]).sequences
                                           for _ in range(args.calls)])
    record("greedy (default graphs) vs generate", [generated[0].to(where)] + [
        greedy_generate(model, processor, batch, tokens, min_new_tokens=tokens, suppress_tokens=[4]).sequences])
    results, walls = [], []
    for _ in range(args.calls + 1):  # the first call warms up
        sync(where)
        start = time.perf_counter()
        results.append(streaming_call(model, processor, images, args.tiny, slots=None))
        sync(where)
        walls.append(time.perf_counter() - start)
    results = results[1:]
    rows.append({"stage": "streaming wall", "setting": args.setting, "batch": args.batch,
                 "wall_ms_median": 1e3 * statistics.median(walls[1:]), "walls_ms": [1e3 * w for w in walls[1:]]})
    print(json.dumps(rows[-1]), flush=True)
    record("streaming tokens", [r.generation.sequences for r in results])
    record("streaming values", [r.values for r in results])


if __name__ == "__main__":
    main()
