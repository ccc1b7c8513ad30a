"""GPU checks of the kept decoding (``buffered_generate(..., keep=True)``): its CUDA graph, captured in one call and
replayed from the first decode step of the next calls, against fresh decodings of the same batches; and the
memory it holds, given back by ``release_kept_decoding``. Part of ``bench_checks``' decode table."""

from __future__ import annotations

import gc
from typing import Any

import torch


def _compare(name: str, fresh: list[Any], kept: list[Any]) -> dict[str, Any]:
    tokens = all(torch.equal(a.generation.sequences, b.generation.sequences) for a, b in zip(fresh, kept, strict=True))
    scale = max(float(a.values.abs().max()) for a in fresh) or 1.0
    diff = max(float((a.values - b.values).abs().max()) for a, b in zip(fresh, kept, strict=True)) / scale
    same = all(torch.equal(a.flat_indices, b.flat_indices) and torch.equal(a.values, b.values)
               for a, b in zip(fresh, kept, strict=True))
    return {"decode": name, "calls": len(kept), "tokens_equal": tokens, "max_abs_diff_over_max": diff,
            "bit_equal": same, "ok": tokens and diff < 1e-5}


def kept_checks(vlm: Any, processor: Any, batches: list[Any]) -> list[dict[str, Any]]:
    """``batches``: LLaVA batches of one shape, the first repeated last (a kept decoding serving other inputs
    between two calls of the same ones)."""
    from neuronscope.attribute.streaming import caption_contributions
    from neuronscope.trace.decode import release_kept_decoding
    from neuronscope.trace.graphs import kept_graphs

    out = []
    for compile in (False, True):
        options = {"max_new_tokens": 8, "top_k": 50, "min_new_tokens": 8, "slots": None, "compile": compile}
        try:
            fresh = [caption_contributions(vlm, processor, batch, **options) for batch in batches]
            gc.collect()
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            kept = [caption_contributions(vlm, processor, batch, keep=True, **options) for batch in batches]
            held = kept_graphs(vlm, "decoding")
            release_kept_decoding(vlm)
            torch.cuda.synchronize()
            row = _compare(f"streaming scores, kept decoding (compiled={compile}) vs fresh calls", fresh, kept)
            row["kept_decodings"] = held
            row["bytes_left_after_release"] = torch.cuda.memory_allocated() - before
            row["ok"] = row["ok"] and held == 1 and row["bytes_left_after_release"] <= 0
            out.append(row)
        except Exception as error:  # noqa: BLE001 - reported, not fatal
            out.append({"decode": f"kept decoding (compiled={compile})", "error": f"{type(error).__name__}: {error}"[:300]})
    return out
