"""Many rows that share one prompt prefix, run as the query tokens of ONE sequence (model plumbing for IG).

Integrated gradients scales one layer's site at one position (the scored one): every earlier position is the same
in all ``layers × steps`` rows. So the prefix runs once (a KV cache); then the ``R`` rows are ``R`` copies of the
scored token, put side by side as ``R`` query tokens of one sequence of batch 1, all at the scored position's
position id, under a 4-D attention mask in which query ``j`` sees every cached prefix key and its own key only::

    mask[0, 0, j, :P]   = visible          (the shared prefix cache, P cached keys of that layer)
    mask[0, 0, j, P + i] = visible iff i == j   (itself; never another row)

Row ``j`` thus computes exactly what a batch row with its own copy of the cache computes, while the cache is held
once: memory grows with the rows, not with rows × prefix, and one forward plus one backward serves all rows.

How transformers 5 takes such a mask: ``masking_utils._preprocess_mask_arguments`` returns a 4-D tensor mask as
it is, for ``create_causal_mask`` and ``create_sliding_window_causal_mask`` alike; models with several layer types
(Gemma-2/3, Qwen2/3 with sliding layers) also take a dict ``{layer type: mask}``. ``sdpa`` takes a boolean mask
(True = attend); ``eager`` adds the mask to the scores, so it gets an additive float mask (0 / dtype min). Flash,
flex and paged attention do not honour a dense 4-D mask: :func:`shared_prefix_mask` returns None there and the
caller falls back to separate batch rows.

Sliding-window layers cache only the last ``window - 1`` prefix keys, exactly those a query at the scored position
may see, so their mask is the same picture with that layer's own cached length.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from neuronscope.trace.forward_options import attention_implementation, text_config

MASKED_ATTENTION = ("sdpa", "eager")
TRIALS = 2  # timed chunks per candidate size before the planner settles
# On a GPU a chunk may use at most this share of the weights' bytes by default (but at least CHUNK_FLOOR), so that
# IG's peak stays within 1.3x the weights (the chunk's memory as the planner models it, corrected by what its first
# chunks measured). At 7B with the rows joining in segments, one chunk of 640 rows peaks at 1.23x the weights and
# 320 + 320 at 1.17x (H200, 2026-12-01).
CHUNK_OF_WEIGHTS = 0.3
CHUNK_FLOOR = 2 * 2**30


def cached_lengths(cache) -> list[int]:
    """Per decoder layer, how many keys the cache holds for it (sliding layers hold at most ``window - 1``)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return []
    return [int(layer.keys.shape[-2]) if getattr(layer, "keys", None) is not None and layer.keys.dim() == 4 else 0
            for layer in layers]


def rows_mask(visible_prefix: torch.Tensor, rows: int, boolean: bool, dtype: torch.dtype) -> torch.Tensor:
    """``[1, 1, rows, P + rows]``: the prefix keys where ``visible_prefix [P]`` is True, and the diagonal of the
    rows block (boolean, or additive ``0 / dtype min`` when ``boolean`` is False). Device work only, no host copy."""
    device = visible_prefix.device
    visible = torch.cat([visible_prefix.expand(rows, -1),
                         torch.eye(rows, dtype=torch.bool, device=device)], dim=1)[None, None]
    if boolean:
        return visible
    blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=device)  # a fill, not a host copy
    return torch.where(visible, torch.zeros((), dtype=dtype, device=device), blocked)


def _one_mask(prefix: int, rows: int, boolean: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[1, 1, rows, prefix + rows]``: all of the prefix, and the diagonal of the rows block."""
    return rows_mask(torch.ones(prefix, dtype=torch.bool, device=device), rows, boolean, dtype)


def shared_prefix_mask(model: nn.Module, cache, prefix: int, rows: int, device: torch.device | str
                       ) -> torch.Tensor | dict[str, torch.Tensor] | None:
    """The 4-D mask that lets ``rows`` query tokens see the ``prefix`` cached keys and themselves only.

    Args:
        model: the causal LM (its attention implementation and layer types decide the mask's form).
        cache: the prefix's KV cache (None when there is no prefix; ``prefix`` must then be 0).
        prefix: number of prefix positions.
        rows: number of query tokens.
        device: where the mask lives (the embedding's device).

    Returns:
        a ``[1, 1, rows, P + rows]`` tensor (boolean for sdpa, additive float for eager), a dict ``{layer type:
        mask}`` when layer types hold different cached lengths, or None when this model cannot take such a mask
        (flash / flex attention, or unequal cached lengths without declared layer types).

    Example:
        >>> mask = shared_prefix_mask(model, cache, prefix=5, rows=3, device="cpu")
        >>> mask[0, 0].int().tolist()[1]          # row 1 sees the 5 prefix keys and key 5 + 1
        [1, 1, 1, 1, 1, 0, 1, 0]
    """
    implementation = attention_implementation(model)
    if implementation not in MASKED_ATTENTION:
        return None
    boolean = implementation == "sdpa"
    dtype = next(model.parameters()).dtype
    lengths = cached_lengths(cache) if cache is not None else []
    if cache is not None and not lengths:
        lengths = [prefix]
    distinct = sorted(set(lengths)) or [0]
    if len(distinct) == 1:
        return _one_mask(distinct[0], rows, boolean, dtype, torch.device(device))
    layer_types = getattr(text_config(model), "layer_types", None)
    if not layer_types or len(layer_types) != len(lengths):
        return None
    by_type: dict[str, int] = {}
    for kind, length in zip(layer_types, lengths, strict=True):
        if by_type.setdefault(kind, length) != length:
            return None  # one layer type with two cached lengths: no dict form can say that
    return {kind: _one_mask(length, rows, boolean, dtype, torch.device(device)) for kind, length in by_type.items()}


@dataclass
class RowPlanner:
    """Chooses how many rows go into one forward + backward: the fastest size that fits in memory, measured.

    Memory: a chunk of ``r`` rows after a prefix of ``P`` is modelled as ``r · (per_row + per_row_key · (P + r))``
    bytes (saved activations, logits, and attention scores when the attention materialises them), times a
    correction measured on the device after each chunk's forward (the memory it holds for the backward); the
    largest ``r`` whose model fits in the budget is ``fit``. An out-of-memory error halves the limit.

    Speed: the candidates are ``fit``, ``fit / 2`` and ``fit / 4``. Each is tried
    :data:`TRIALS` times, round by round, on the first chunk of a call (real rows: no work is thrown away; a first
    chunk runs every layer, where a later one may enter the decoder deeper, so first chunks compare), and its best
    rows per second recorded (a size's first chunk pays one-time costs: new kernels, allocator growth); then the fastest is used,
    in balanced chunks (no small tail).
    On a GPU each chunk reads all weights once, so the largest usually wins; on a CPU smaller chunks can be faster
    (cache-resident activations). :func:`planner_for` keeps one planner per model, so that what was measured
    carries over to the next calls.

    Attributes:
        per_row: bytes a row keeps for the backward, per row (all layers, logits included).
        per_row_key: bytes per row and per key position (attention weights of every layer).
        budget: bytes available for one chunk (default on a GPU: 90 % of the free device memory, at most
            ``CHUNK_OF_WEIGHTS`` of the weights' bytes or ``CHUNK_FLOOR`` if that is more; 4 GiB on a CPU).
        limit: an upper bound on rows per chunk (the user's ``batch_size``: then no sizes are tried), or None.
        correction: measured / modelled memory of the last chunk (starts at 1).
        weights: the model's parameter bytes (the default GPU budget's cap).
        speeds: candidate size -> best measured rows per second.
    """

    per_row: float
    per_row_key: float
    budget: float | None = None
    limit: int | None = None
    correction: float = 1.0
    weights: float = 0.0
    history: list[tuple[int, int]] = field(default_factory=list)
    speeds: dict[int, float] = field(default_factory=dict)
    trials: dict[int, int] = field(default_factory=dict)

    @classmethod
    def for_model(cls, model: nn.Module, limit: int | None = None, budget: float | None = None) -> RowPlanner:
        """A planner with per-row costs read from the model's sizes."""
        config = text_config(model)
        parameter = next(model.parameters())
        size = parameter.element_size()
        d_model = int(getattr(config, "hidden_size", getattr(config, "n_embd", 0)) or 0)
        d_ff = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d_model)
        layers = int(getattr(config, "num_hidden_layers", getattr(config, "n_layer", 1)))
        heads = int(getattr(config, "num_attention_heads", getattr(config, "n_head", 1)))
        vocab = int(getattr(config, "vocab_size", 0))
        # saved for the backward, per token and layer: ~8 d_model-wide and ~4 d_ff-wide tensors; logits in float32
        # three times (logits, softmax, its gradient)
        per_row = layers * size * (8 * d_model + 4 * d_ff) + 3 * 4 * vocab
        per_row_key = 0.0 if attention_implementation(model) == "sdpa" and parameter.is_cuda else 2 * layers * heads * 4
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        return cls(float(per_row), float(per_row_key), budget, limit, weights=float(weights))

    def modelled(self, rows: int, prefix: int) -> float:
        return rows * (self.per_row + self.per_row_key * (prefix + rows)) * self.correction

    def available(self, device: torch.device) -> float:
        if self.budget is not None:
            return self.budget
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            cap = max(CHUNK_OF_WEIGHTS * self.weights, CHUNK_FLOOR) if self.weights else float("inf")
            return min(0.9 * (free + cached), cap)
        return 4.0 * 2**30

    def fit(self, total: int, prefix: int, device: torch.device) -> int:
        """The most rows (≤ ``total``) whose modelled memory fits, within ``limit``."""
        room = self.available(device)
        fits = total
        while fits > 1 and self.modelled(fits, prefix) > room:
            fits = (fits + 1) // 2
        return max(1, min(fits, self.limit) if self.limit is not None else fits)

    def candidates(self, total: int, prefix: int, device: torch.device) -> list[int]:
        fits = self.fit(total, prefix, device)
        if self.limit is not None:
            return [fits]
        return sorted({size for size in (fits, fits // 2, fits // 4) if size >= 8} or {fits}, reverse=True)

    def next_chunk(self, remaining: int, prefix: int, device: torch.device,
                   total: int | None = None) -> tuple[int, int | None]:
        """``(rows, candidate)`` for the next chunk of a prompt of ``total`` rows (default ``remaining``) with
        ``remaining`` left: an untried candidate (to be timed: ``candidate`` is returned), else a balanced chunk of
        the fastest one (``candidate`` None)."""
        sizes = self.candidates(remaining if total is None else total, prefix, device)
        first = total is None or remaining == total  # later chunks may enter the decoder deeper: not comparable
        untried = [size for size in sizes if self.trials.get(size, 0) < TRIALS and size <= remaining] if first else []
        if untried and len(sizes) > 1:  # round by round: each size once, then each again
            size = min(untried, key=lambda size: self.trials.get(size, 0))
            return size, size
        best = max(sizes, key=lambda size: self.speeds.get(size, 0.0)) if self.speeds else sizes[0]
        count = -(-remaining // best)
        return -(-remaining // count), None

    def settled(self, total: int, prefix: int, device: torch.device) -> bool:
        """Whether every candidate size has been tried: from now on each call of ``total`` rows is cut into the
        same :meth:`chunks` (what a CUDA graph of the call needs)."""
        sizes = self.candidates(total, prefix, device)
        return len(sizes) == 1 or all(self.trials.get(size, 0) >= TRIALS for size in sizes if size <= total)

    def chunks(self, total: int, prefix: int, device: torch.device) -> list[int]:
        """Balanced chunk sizes of the fastest known candidate (the plan when nothing is left to try)."""
        if total <= 0:
            return []
        sizes = self.candidates(total, prefix, device)
        best = max(sizes, key=lambda size: self.speeds.get(size, 0.0)) if self.speeds else sizes[0]
        count = -(-total // best)
        base, extra = divmod(total, count)
        return [base + (1 if i < extra else 0) for i in range(count)]

    def timed(self, candidate: int, rows: int, seconds: float) -> None:
        """Record the rows per second of a chunk planned as ``candidate``."""
        self.trials[candidate] = self.trials.get(candidate, 0) + 1
        if seconds > 0:
            self.speeds[candidate] = max(self.speeds.get(candidate, 0.0), rows / seconds)

    def observe(self, rows: int, prefix: int, peak_bytes: float) -> None:
        """Record what a chunk's forward holds (bytes above the memory in use before it) to correct the model."""
        self.history.append((rows, int(peak_bytes)))
        modelled = self.modelled(rows, prefix) / self.correction
        if modelled > 0 and peak_bytes > 0:
            self.correction = max(0.25, peak_bytes / modelled)

    def shrink(self, failed_rows: int) -> None:
        """An out-of-memory chunk of ``failed_rows``: never try more than half of it again."""
        self.limit = max(1, failed_rows // 2)
        self.speeds = {size: speed for size, speed in self.speeds.items() if size <= self.limit}
        self.trials = {size: n for size, n in self.trials.items() if size <= self.limit}


_PLANNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def planner_for(model: nn.Module, limit: int | None = None, budget: float | None = None) -> RowPlanner:
    """The model's planner for this ``limit`` and ``budget``: one kept per model and setting, so that its measured
    speeds carry over between calls (the sizes are tried on the first calls only)."""
    planners = _PLANNERS.setdefault(model, {})
    key = (limit, budget)
    if key not in planners:
        planners[key] = RowPlanner.for_model(model, limit, budget)
    return planners[key]
