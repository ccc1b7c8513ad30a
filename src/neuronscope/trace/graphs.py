"""CUDA-graph capture shared by the paths that replay fixed shapes (greedy decode steps, integrated-gradients rows).

A CUDA graph records the kernels one call of a function issues and replays them with one launch, so that the host
no longer issues them one by one. What the function reads and writes must live at fixed addresses (static buffers
filled before each replay), and it must not make the host wait for the device (``.item()``, a data-dependent
shape): such an operation fails the capture, and :func:`capture` then returns None with a warning so that the
caller runs eagerly. As CUDA graphs ask, the eager warm-up before a capture runs on a side stream
(:func:`on_side_stream`). :class:`ShapeGraphs` keeps a path's graphs per model and call shape;
:func:`release_graphs` frees them.

The paths that replay a whole forward of a text batch (contribution, LPI's activations) pad it on the right to the
next multiple of :data:`BUCKET` positions (:class:`PaddedInputs`), so that batches of similar lengths share a
graph, and key each graph by :func:`model_key` too (the weights' addresses and the graph-safe hooks present).
"""

from __future__ import annotations

import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuronscope.models.decoding import TEXT_INPUTS
from neuronscope.trace.hooks import foreign_hooks, graph_safe_hooks

# A padded forward's positions are a multiple of BUCKET, so that prompts of similar lengths share a graph (620 -> 640).
BUCKET = 32


_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}


def side_stream() -> torch.cuda.Stream:
    """The current device's one side stream for warm-ups and captures, made on first use and then reused.

    One, not a fresh one per call: cuBLAS keeps a workspace for every stream it has run on (allocated through
    torch's caching allocator, counted as allocated), so a fresh ``torch.cuda.Stream()`` per decoding call walks
    torch's pool of 32 streams and leaves up to 32 workspaces allocated: ~0.85 GiB measured on an H200 after a few
    dozen calls (``benchmarks/probe_memory.py``), counted in every later call's peak."""
    index = torch.cuda.current_device()
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream(index)
    return _SIDE_STREAMS[index]


def on_side_stream(function: Callable[[], Any]) -> Any:
    """``function()`` on the device's side stream (:func:`side_stream`), which waits for the current one (and is
    waited for); its result."""
    stream = side_stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        result = function()
    torch.cuda.current_stream().wait_stream(stream)
    return result


def capture(function: Callable[[], Any], what: str, pool: Any = None,
            drain: bool = True) -> tuple[torch.cuda.CUDAGraph, Any] | None:
    """``(graph, result)``: the graph of one call of ``function`` (recorded, not run) and the tensors that call
    returned (they live in the graph's memory and are rewritten by each replay), or None with a warning naming
    ``what`` if the call cannot be captured (an operation that reads the device from the host, or out of memory).
    ``pool``: a memory pool shared with other graphs that are never replayed at the same time.

    ``drain`` (torch's own ``torch.cuda.graph``): wait for the device and hand its cached memory back to the driver
    first, which leaves the most memory for a large graph. ``drain=False`` records while the queued work runs on,
    and keeps the cache (:func:`_capture_queued`): for a small graph captured at every call (a decode step)."""
    graph = torch.cuda.CUDAGraph()
    try:
        if not drain:
            return graph, _capture_queued(graph, function, pool)
        with torch.cuda.graph(graph, pool=pool):
            result = function()
    except RuntimeError as error:
        warnings.warn(f"{what} could not be captured into a CUDA graph, running eagerly: {error}", stacklevel=3)
        return None
    return graph, result


_LAST_QUEUED: dict[int, torch.cuda.CUDAGraph] = {}  # per device: the last graph captured by _capture_queued


def _capture_queued(graph: torch.cuda.CUDAGraph, function: Callable[[], Any], pool: Any) -> Any:
    """Record ``function`` into ``graph`` on a side stream of the current device without synchronising it or
    emptying the allocator's cache (what ``torch.cuda.graph`` does on entry): the host records while the device
    still runs the work queued before (a prompt's forward), and the next call reuses the cached blocks. Recording
    runs nothing; a replay is queued after that work on the current stream.

    Without ``pool`` the graph shares the memory pool of the last graph captured so on this device, which is kept
    until the next one: a graph's own pool is handed back to the driver only by emptying the cache, and a pool
    whose graphs are all gone cannot be captured into again (the pinned-memory allocator refuses it: measured on
    torch 2.11). Such graphs must never be replayed once a later one is captured (decode steps: one call after
    another)."""
    index = torch.cuda.current_device()
    stream = side_stream()
    shared = pool if pool is not None else _LAST_QUEUED[index].pool() if index in _LAST_QUEUED else None
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph.capture_begin(*(() if shared is None else (shared,)), capture_error_mode="global")
        try:
            result = function()
        finally:
            graph.capture_end()
    torch.cuda.current_stream().wait_stream(stream)
    if pool is None:
        _LAST_QUEUED[index] = graph
    return result


class StepReplayer:
    """Runs a step that reads and writes only fixed buffers again and again: its first call eagerly (on a side
    stream when graphs follow), its second captured into a CUDA graph and replayed, every later one replayed;
    eagerly throughout without ``graphs`` or once a capture failed (greedy decoding's steps, slot decoding's
    packed calls). ``drain``: as :func:`capture` takes it; ``own_pool``: the graph gets a memory pool of its own
    (one replayed again after other graphs were captured: a kept decoder's)."""

    def __init__(self, step: Callable[[], Any], what: str, graphs: bool, drain: bool = True, own_pool: bool = False):
        self.step, self.what, self.graphs, self.drain, self.own_pool = step, what, graphs, drain, own_pool
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0

    def __call__(self) -> None:
        if self.graphs and self.calls == 1:
            pool = torch.cuda.graph_pool_handle() if self.own_pool else None
            captured = capture(self.step, self.what, pool=pool, drain=self.drain)
            self.graph = None if captured is None else captured[0]
            self.graphs = self.graph is not None  # a step that cannot be captured runs eagerly from here on
        if self.graph is not None:
            self.graph.replay()
        elif self.graphs:  # the eager warm-up runs on a side stream, as CUDA graphs ask
            on_side_stream(self.step)
        else:
            self.step()
        self.calls += 1


def replay_blocker(model: nn.Module, device: torch.device, attention: str) -> str | None:
    """Why no call of ``model`` on ``device`` can be replayed from a CUDA graph, whatever the path (None: it can):
    not CUDA, ``attention`` (the decoder's attention implementation) other than ``sdpa`` (under ``eager`` a capture
    fails on a host-to-device copy), a hook that is not graph-safe (a replay would freeze it at the captured call),
    or parameters on several devices."""
    if device.type != "cuda":
        return "not on a CUDA device"
    if attention != "sdpa":
        return f"attention '{attention}' (graphs are captured with 'sdpa' only)"
    if foreign_hooks(model):
        return "hooks on the model that are not graph-safe (an intervention?)"
    if len({parameter.device for parameter in model.parameters()}) > 1:
        return "the model spans several devices"
    return None


def text_blocker(model: nn.Module, inputs: dict[str, Any], attention: str) -> str | None:
    """:func:`replay_blocker` for a forward of text ``inputs`` (and nothing but token ids, mask and position ids,
    which :class:`PaddedInputs` knows how to pad)."""
    common = replay_blocker(model, inputs["input_ids"].device, attention)
    if common is not None:
        return common
    if set(inputs) - TEXT_INPUTS:
        return f"inputs other than token ids, mask and position ids ({sorted(set(inputs) - TEXT_INPUTS)})"
    return None


def model_key(model: nn.Module) -> tuple:
    """What of the model a kept graph is valid for: the parameters' addresses (replaced weights recapture, weights
    edited in place are read where they are) and the graph-safe hooks on it (a graph replays the hooks present at
    its capture, no others: :func:`~neuronscope.trace.hooks.graph_safe_hooks`)."""
    return tuple(parameter.data_ptr() for parameter in model.parameters()), graph_safe_hooks(model)


def text_key(model: nn.Module, inputs: dict[str, torch.Tensor], bucket: int) -> tuple:
    """The part of a padded text forward's graph key that every such path shares: batch size, padded length, the
    inputs' names and dtypes, :func:`model_key`."""
    return (inputs["input_ids"].shape[0], bucket, tuple((name, value.dtype) for name, value in sorted(inputs.items())),
            model_key(model))


def flat_rows(positions: torch.Tensor, bucket: int) -> torch.Tensor:
    """``[B · n]`` on the host: each (row, position) of ``positions [B, n]`` as its index ``b · bucket + position``
    in the padded batch's flattened tokens."""
    positions = positions.cpu()
    return (torch.arange(positions.shape[0])[:, None] * bucket + positions).reshape(-1)


def padded_length(length: int) -> int:
    """The positions a batch of ``length`` is padded to: the next multiple of :data:`BUCKET` above it (at least one
    padded position, so that every call of a shape takes the same 4-D mask)."""
    return (length // BUCKET + 1) * BUCKET


@dataclass
class PaddedInputs:
    """Static text inputs ``[B, bucket]`` that a graph reads, refilled per call: padded on the right, where the ids
    and position ids repeat the last column and the attention mask is 0. Under causal attention no real position
    sees a later one, so the real positions compute what the unpadded batch computes, up to rounding (the padded
    batch takes a 4-D mask where an unpadded one may take sdpa's causal kernel)."""

    tensors: dict[str, torch.Tensor]

    @classmethod
    def empty(cls, inputs: dict[str, torch.Tensor], bucket: int) -> PaddedInputs:
        return cls({name: value.new_zeros(value.shape[0], bucket) for name, value in inputs.items()})

    def fill(self, inputs: dict[str, torch.Tensor]) -> None:
        for name, static in self.tensors.items():
            value, length = inputs[name], inputs[name].shape[1]
            static[:, :length].copy_(value)
            if name == "attention_mask":
                static[:, length:].zero_()
            else:
                static[:, length:].copy_(value[:, -1:].expand(-1, static.shape[1] - length))


@dataclass
class ShapeGraphs:
    """One model's graphs of one path, keyed by call shape: a shape's first call runs eagerly (one call never pays
    for a capture), its second is captured, later ones replay. At most ``limit`` graphs are kept, the least
    recently used dropped first; they share one memory pool (they never run at the same time, and each result is
    copied out right after its replay)."""

    limit: int
    seen: set = field(default_factory=set)
    failed: set = field(default_factory=set)
    entries: OrderedDict = field(default_factory=OrderedDict)
    pool: Any = None

    def replayable(self, key: Any) -> Any:
        """The entry kept under ``key`` (now the most recently used), or None."""
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def eager_first(self, key: Any) -> bool:
        """Whether this call of ``key`` runs eagerly: its shape's first call (noted now), or a shape whose capture
        failed."""
        if key in self.failed or key not in self.seen:
            self.seen.add(key)
            return True
        return False

    def forget(self, key: Any) -> None:
        """Make ``key``'s next call its first again (eager), e.g. after a call of it failed a check."""
        self.seen.discard(key)

    def capture(self, function: Callable[[], Any], what: str, key: Any) -> tuple[torch.cuda.CUDAGraph, Any] | None:
        """:func:`capture` into this path's pool; a failed capture is remembered (that shape stays eager)."""
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        captured = capture(function, what, self.pool)
        if captured is None:
            self.failed.add(key)
        return captured

    def keep(self, key: Any, entry: Any) -> Any:
        self.entries[key] = entry
        while len(self.entries) > self.limit:
            self.entries.popitem(last=False)
        return entry

    def replay_or_run(self, key: Any, static: Callable[[], Any], refill: Callable[[Any], None],
                      recorded: Callable[[Any], Any], what: str, eager: Callable[[Any], Any] | None = None,
                      alive: Any = None) -> Any:
        """This call's result: ``recorded(buffers)`` replayed from ``key``'s graph after ``refill(buffers)``; or, for
        the shape's first call and one that cannot be captured, ``eager(buffers)`` (default ``recorded``) on fresh
        buffers filled for this call (``static()``); or, for its second, captured now into a graph kept with its
        buffers (and ``alive``: what else the graph reads that must not be freed), then replayed. A replay's result
        lives in the graph's memory until the next replay."""
        entry = self.replayable(key)
        if entry is not None:
            refill(entry.static)
        else:
            buffers = static()
            captured = None if self.eager_first(key) else self.capture(lambda: recorded(buffers), what, key)
            if captured is None:
                return (eager or recorded)(buffers)
            entry = self.keep(key, Kept(captured[0], buffers, captured[1], alive))
        entry.graph.replay()
        return entry.out


@dataclass
class Kept:
    """A kept graph, the static buffers it reads, the outputs it writes, and what else must stay alive with it."""

    graph: torch.cuda.CUDAGraph
    static: Any
    out: Any
    alive: Any = None


_BY_MODEL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def graphs_of(model: nn.Module, path: str, limit: int) -> ShapeGraphs:
    """The :class:`ShapeGraphs` of ``path`` (e.g. ``"integrated_gradients"``) on ``model``, made on first use."""
    return _BY_MODEL.setdefault(model, {}).setdefault(path, ShapeGraphs(limit))


def kept_graphs(model: nn.Module | None = None, path: str | None = None) -> int:
    """How many graphs ``model`` (default: every model) keeps, of ``path`` (default: every path)."""
    models = list(_BY_MODEL.values()) if model is None else [_BY_MODEL.get(model, {})]
    return sum(len(graphs.entries) for paths in models for name, graphs in paths.items() if path in (None, name))


def release_path(model: nn.Module, path: str) -> None:
    """Drop the graphs (and what they keep) of one ``path`` of ``model``, e.g. its kept decoding."""
    if _BY_MODEL.get(model, {}).pop(path, None) is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def release_graphs(model: nn.Module) -> None:
    """Drop every graph kept for ``model`` (integrated gradients, contribution, LPI's rows; the last decode step's)
    and give their memory back."""
    _LAST_QUEUED.clear()  # the last decode step's graph, kept for its memory pool (_capture_queued)
    if _BY_MODEL.pop(model, None) is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
