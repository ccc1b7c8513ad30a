"""Triton kernel of :func:`neuronscope.attribute.kernels.shifted_logsumexp` (imported only where Triton exists).

One program per row ``n``: one pass over ``delta[n]`` in vocabulary tiles of ``BLOCK``, each lane keeping a running
maximum ``m`` and ``s = Σ exp(z - m)`` in float32 (rescaled when the maximum grows); the lanes are combined at the
end. ``delta`` is read in its own dtype (bf16 stays bf16), nothing of size ``V`` is written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _shifted_lse_kernel(base_ptr, delta_ptr, scale_ptr, out_ptr, vocab, row_stride, softcap,
                        HAS_SCALE: tl.constexpr, HAS_CAP: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    factor = 1.0
    if HAS_SCALE:
        factor = tl.load(scale_ptr + row).to(tl.float32)
    # a finite "minus infinity" for the running max: exp(start - start) stays 1, never NaN
    running_max = tl.full([BLOCK], -1.0e30, tl.float32)
    running_sum = tl.zeros([BLOCK], tl.float32)
    row_start = delta_ptr + row.to(tl.int64) * row_stride
    for start in range(0, vocab, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        valid = offsets < vocab
        base = tl.load(base_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
        delta = tl.load(row_start + offsets, mask=valid, other=0.0).to(tl.float32)
        z = base + factor * delta
        if HAS_CAP:
            z = softcap * (2.0 * tl.sigmoid(2.0 * z / softcap) - 1.0)  # softcap · tanh(z / softcap)
        z = tl.where(valid, z, float("-inf"))
        new_max = tl.maximum(running_max, z)
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.exp(z - new_max)
        running_max = new_max
    top = tl.max(running_max, 0)
    total = tl.sum(running_sum * tl.exp(running_max - top), 0)
    tl.store(out_ptr + row, top + tl.log(total))


def shifted_logsumexp(base: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor | None,
                      softcap: float | None, block: int = 2048) -> torch.Tensor:
    """``[N]`` float32 ``LSE_v cap(base_v + scale_n · delta_nv)``; see the module docstring."""
    rows, vocab = delta.shape
    if delta.stride(-1) != 1:
        delta = delta.contiguous()
    base = base.contiguous()
    out = torch.empty(rows, dtype=torch.float32, device=delta.device)
    scale_arg = scale.contiguous() if scale is not None else out  # unused when HAS_SCALE is False
    _shifted_lse_kernel[(rows,)](base, delta, scale_arg, out, vocab, delta.stride(0), float(softcap or 1.0),
                                 HAS_SCALE=scale is not None, HAS_CAP=bool(softcap), BLOCK=block)
    return out
