"""Streaming selection of neuron scores on the device: a running top-k or a threshold, layer by layer, so that the
``[rows, layers × d_ff]`` score grid never exists (on the host, nor whole on the device), and one pinned,
asynchronous copy of the kept entries at the end.

Pure tensor math: the accumulators take each layer's ``[rows, d_ff]`` scores as they come (from a forward hook,
or from stored activations) and keep the flat indices ``layer * d_ff + i``.

Example:
    >>> top = RunningTopK(rows=2, k=3, d_ff=4, device="cpu")
    >>> top.add(0, torch.tensor([[1., 5, 2, 0], [0, 1, 0, 9]]))
    >>> top.add(1, torch.tensor([[4., 0, 0, 0], [8, 0, 0, 0]]))
    >>> top.values.tolist(), top.indices.tolist()
    ([[5.0, 4.0, 2.0], [9.0, 8.0, 1.0]], [[1, 4, 2], [3, 4, 1]])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from neuronscope.errors import NeuronscopeError


class RunningTopK:
    """The top-``k`` (signed, descending; or by magnitude) of each row over every layer added so far.

    Args:
        rows: number of score rows (e.g. examples × targets).
        k: how many to keep per row.
        d_ff: neurons per layer (flat index ``layer * d_ff + i``).
        device: where the running buffers live.
        absolute: rank by ``|score|`` (values keep their sign).
    """

    def __init__(self, rows: int, k: int, d_ff: int, device: torch.device | str, absolute: bool = False):
        if k < 1:
            raise NeuronscopeError(f"top_k must be at least 1, got {k}")
        self.k, self.d_ff, self.absolute = k, d_ff, absolute
        self.values = torch.full((rows, 0), float("-inf"), device=device)
        self.indices = torch.zeros((rows, 0), dtype=torch.int64, device=device)

    def add(self, layer: int, scores: torch.Tensor) -> None:
        """Merge one layer's ``scores [rows, d_ff]`` (float32 or float64)."""
        scores = scores.to(self.values.device)
        if self.values.dtype != scores.dtype:
            self.values = self.values.to(scores.dtype)
        flat = layer * self.d_ff + torch.arange(scores.shape[-1], device=scores.device)
        values = torch.cat([self.values, scores], dim=-1)
        indices = torch.cat([self.indices, flat[None].expand(scores.shape[0], -1)], dim=-1)
        keep = min(self.k, values.shape[-1])
        order = (values.abs() if self.absolute else values).topk(keep, dim=-1, sorted=True).indices
        self.values, self.indices = values.gather(-1, order), indices.gather(-1, order)


class BufferedTopK:
    """Same answer as :class:`RunningTopK`, from one buffer ``[rows, layers × d_ff]`` and one top-k at the end.

    Faster on a CPU, where a top-k of ``k`` out of ``k + d_ff`` per layer costs about a sort; on a GPU the running
    merge keeps the memory at ``rows × (k + d_ff)`` instead. :func:`top_k_selector` picks one.
    """

    def __init__(self, rows: int, k: int, d_ff: int, layers: int, device: torch.device | str, absolute: bool = False,
                 dtype: torch.dtype = torch.float32):
        if k < 1:
            raise NeuronscopeError(f"top_k must be at least 1, got {k}")
        self.k, self.d_ff, self.absolute = k, d_ff, absolute
        self.buffer = torch.zeros(rows, layers * d_ff, device=device, dtype=dtype)
        self._done: tuple[torch.Tensor, torch.Tensor] | None = None

    def add(self, layer: int, scores: torch.Tensor) -> None:
        if self.buffer.dtype != scores.dtype:
            self.buffer = self.buffer.to(scores.dtype)
        self.buffer[:, layer * self.d_ff:(layer + 1) * self.d_ff] = scores
        self._done = None

    def whole(self) -> torch.Tensor:
        """The whole ``[rows, layers × d_ff]`` buffer, to write every layer's scores into at once."""
        self._done = None
        return self.buffer

    def slot(self, layer: int) -> torch.Tensor:
        """The buffer's ``[rows, d_ff]`` view for ``layer``, to write that layer's scores into in place (e.g. with
        ``torch.mul(..., out=)``: one kernel, no temporary)."""
        self._done = None
        return self.buffer[:, layer * self.d_ff:(layer + 1) * self.d_ff]

    def _finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._done is None:
            keep = min(self.k, self.buffer.shape[-1])
            found = (self.buffer.abs() if self.absolute else self.buffer).topk(keep, dim=-1, sorted=True)
            values = self.buffer.gather(-1, found.indices) if self.absolute else found.values
            self._done = values, found.indices
        return self._done

    @property
    def values(self) -> torch.Tensor:
        return self._finish()[0]

    @property
    def indices(self) -> torch.Tensor:
        return self._finish()[1]


BUFFER_LIMIT = 512 * 2**20  # bytes: above this the running merge is used (memory), below one top-k (speed)
SELECTOR = "auto"  # or "buffered" / "running": forces one (benchmarks compare them)


def top_k_selector(rows: int, k: int, d_ff: int, layers: int, device: torch.device | str,
                   absolute: bool = False, dtype: torch.dtype = torch.float32) -> RunningTopK | BufferedTopK:
    """One buffer and one top-k at the end when the buffer is small (``rows × layers × d_ff`` float32 ≤
    ``BUFFER_LIMIT``; always on a CPU, where a per-layer top-k costs about a sort), else the running merge (memory
    ``rows × (k + d_ff)``). ``SELECTOR`` forces one. ``dtype``: the buffer's (the scores')."""
    small = rows * layers * d_ff * 4 <= BUFFER_LIMIT or torch.device(device).type == "cpu"
    if SELECTOR == "buffered" or (SELECTOR == "auto" and small):
        return BufferedTopK(rows, k, d_ff, layers, device, absolute, dtype)
    return RunningTopK(rows, k, d_ff, device, absolute)


@dataclass
class ThresholdSelection:
    """Every score at or above ``threshold`` (``|score|`` when ``absolute``), as coordinates + values.

    Attributes:
        coordinates: ``[nnz, 2]`` (row, flat index ``layer * d_ff + i``) once :meth:`finish` ran.
        values: ``[nnz]``.
    """

    threshold: float
    d_ff: int
    absolute: bool = False
    parts: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    coordinates: torch.Tensor | None = None
    values: torch.Tensor | None = None

    def add(self, layer: int, scores: torch.Tensor) -> None:
        keep = (scores.abs() if self.absolute else scores) >= self.threshold
        where = keep.nonzero()  # [nnz_l, 2] (row, i)
        values = scores[keep]
        where = torch.stack([where[:, 0], where[:, 1] + layer * self.d_ff], dim=1)
        self.parts.append((where, values))

    def finish(self) -> None:
        if not self.parts:
            self.coordinates, self.values = torch.zeros(0, 2, dtype=torch.long), torch.zeros(0)
            return
        self.coordinates = torch.cat([part[0] for part in self.parts])
        self.values = torch.cat([part[1] for part in self.parts])
        self.parts = []


def to_host(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Copy device tensors to the host through pinned buffers, asynchronously, with one synchronisation at the end
    (CPU tensors are returned as they are).

    Example:
        >>> values, = to_host(torch.ones(3))
    """
    out: list[torch.Tensor] = []
    pending = False
    for tensor in tensors:
        if tensor.device.type != "cuda":
            out.append(tensor)
            continue
        buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        buffer.copy_(tensor, non_blocking=True)
        out.append(buffer)
        pending = True
    if pending:
        torch.cuda.synchronize()
    return out
