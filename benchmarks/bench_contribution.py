"""Contribution of all L × d_ff neurons for every token of a 20-token caption, against a teacher-forced forward
of the same sequence (Llama-2-7B shape, bf16; batch 1 and 8; T = 600 prompt + 20 caption tokens).

Rows: ``forward`` (the model's plain forward, ``model(**inputs)``, with its logits and KV cache: what the goal is
measured against), ``forward_no_logits`` (the same with ``logits_to_keep=1, use_cache=False``), ``top_k``
(``contribution(..., top_k=10_000)``: scores per layer inside the forward, selection on the device, sparse
result; one buffer and one top-k at these sizes; on a GPU replayed from a CUDA graph after a shape's first two
calls, which are timed apart, the peak covering the capture), ``top_k_eager`` (the same with ``graphs=False``:
every call eager), ``top_k_running_merge`` (the same with the layer-by-layer
running top-k forced) and ``dense`` (the dense grid copied to the host, the old path). Peak memory is the largest allocation during the timed calls, weights included,
divided by the weights. Agreement: the device-selected top-k against the top-k of the dense grid.

    python benchmarks/bench_contribution.py OUT
    python benchmarks/bench_contribution.py OUT --tiny
    python benchmarks/bench_contribution.py OUT --smollm2      # CPU figures, 1 thread
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from common import (
    LLAMA2_7B,
    TINY,
    build_llama,
    device,
    free,
    graphed,
    load_smollm2,
    main,
    measure,
    paired,
    strip,
    text_batch,
    weights_bytes,
)


def _targets(ids: torch.Tensor, caption: int):
    """Every caption token as a target at the position that produces it (the 20 last positions)."""
    from neuronscope.inputs.targets import TargetSet

    rows, length = ids.shape
    positions = torch.arange(length - caption - 1, length - 1)[None].expand(rows, -1)
    return TargetSet(ids[:, -caption:].cpu(), positions.clone(), torch.ones(rows, caption, dtype=torch.bool))


def _agreement(kept, flat: torch.Tensor) -> dict[str, float]:
    """A top-k result against the top-k of a dense grid ``flat [rows, targets, L·d_ff]``: the mean fraction of each
    kept set found in the other, and the largest difference between the two kept value lists (best first)."""
    k = kept.values.shape[-1]
    order = flat.topk(k, dim=-1).indices
    offset = torch.arange(order[..., 0].numel(), device=order.device).view(order.shape[:-1])[..., None] * flat.shape[-1]
    found = torch.isin(kept.indices.to(order.device) + offset, order + offset).float().mean()  # rows kept apart
    return {"kept_overlap": float(found), "max_abs_value_diff": float((flat.gather(-1, order) - kept.values).abs().max())}


def _padded(batch, length: int):
    """``batch`` padded on the right to ``length`` positions as a CUDA-graph replay pads it
    (:class:`~neuronscope.trace.graphs.PaddedInputs`): an eager call on it takes the replay's attention kernel (a 4-D
    mask)."""
    from neuronscope.inputs import Batch
    from neuronscope.trace.graphs import PaddedInputs

    padded = PaddedInputs.empty(dict(batch.inputs), length)
    padded.fill(dict(batch.inputs))
    return Batch(padded.tensors, batch.texts, batch.lengths)


def table(model, where: torch.device, batches: list[int], prompt: int, caption: int, repeats: int,
          top_k: int = 10_000) -> list[dict[str, Any]]:
    from neuronscope.attribute import selection
    from neuronscope.attribute.contribution import contribution
    from neuronscope.trace.graphs import padded_length, release_graphs

    weights = weights_bytes(model)
    vocab = model.config.vocab_size
    rows = []
    for size in batches:
        ids = torch.randint(3, vocab, (size, prompt + caption), device=where)
        batch, targets = text_batch(ids), _targets(ids, caption)
        entry: dict[str, Any] = {"batch": size, "length": prompt + caption, "targets_per_row": caption}

        @torch.no_grad()
        def forward(batch=batch):
            return model(**batch.inputs).logits[:, -1, :2].float().cpu()

        @torch.no_grad()
        def forward_no_logits(batch=batch):
            return model(**batch.inputs, logits_to_keep=1, use_cache=False).logits[:, -1, :2].float().cpu()

        def running(b=batch, t=targets):  # the running merge forced (the default picks it above 512 MiB only)
            selection.SELECTOR = "running"
            try:
                return contribution(model, b, t, top_k=top_k)
            finally:
                selection.SELECTOR = "auto"

        def top(b=batch, t=targets):
            return contribution(model, b, t, top_k=top_k)

        for name, function in (("forward", forward), ("forward_no_logits", forward_no_logits),
                               ("top_k", top),
                               ("top_k_eager", lambda b=batch, t=targets: contribution(model, b, t, top_k=top_k,
                                                                                      graphs=False)),
                               ("top_k_running_merge", running),
                               ("dense", lambda b=batch, t=targets: contribution(model, b, t))):
            measured = (graphed if name == "top_k" else measure)(function, where, repeats, weights=weights)
            entry[name] = strip(measured)
            if name == "top_k":
                kept = measured["result"]
            if name == "top_k_eager":
                kept_eager = measured["result"]
            if name == "dense":
                dense = measured["result"].values
        for name in ("forward_no_logits", "top_k", "top_k_eager", "top_k_running_merge", "dense"):
            entry[f"{name}_over_forward"] = entry[name]["seconds"] / entry["forward"]["seconds"]
        entry["top_k_over_forward_paired"] = paired(forward, top, where, pairs=repeats * 3)
        entry["top_k_eager_over_forward_paired"] = paired(
            forward, lambda b=batch, t=targets: contribution(model, b, t, top_k=top_k, graphs=False), where,
            pairs=repeats * 3)
        flat = dense.flatten(2)
        entry["agreement"] = {"replay_vs_dense": _agreement(kept, flat), "eager_vs_dense": _agreement(kept_eager, flat),
                              "replay_vs_eager_on_the_padded_batch": _agreement(
                                  kept, contribution(model, _padded(batch, padded_length(ids.shape[1])), targets,
                                                     graphs=False).values.flatten(2)),
                              "max_abs_score": float(flat.abs().max())}
        rows.append(entry)
        del dense, kept
        release_graphs(model)
        free()
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    where = torch.device("cpu") if args.tiny or args.smollm2 else device()
    if args.smollm2:
        model, _ = load_smollm2()
        rows = table(model, where, [1], prompt=200, caption=20, repeats=2)
        shape = "SmolLM2-135M-Instruct (real weights, float32)"
    elif args.tiny:
        model = build_llama(TINY, torch.float32, where)
        rows = table(model, where, [1, 2], prompt=30, caption=5, repeats=2, top_k=50)
        shape = "tiny"
    else:
        model = getattr(args, "shared_model", None) or build_llama(LLAMA2_7B, torch.bfloat16, where)
        rows = table(model, where, [1, 8], prompt=600, caption=20, repeats=5)
        shape = "Llama-2-7B (random, bf16)"
    return {"table": "contribution", "model": shape,
            "goal": "top_k <= 1.10x the forward, peak <= weights + 10 %", "rows": rows}


if __name__ == "__main__":
    main("contribution", run, __doc__.splitlines()[0])
