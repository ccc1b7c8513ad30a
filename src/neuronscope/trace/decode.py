"""Greedy decoding with a static KV cache, each decode step replayed from one CUDA graph captured per batch.

Why: on a GPU a decode step of a 7B model is a few milliseconds of device work behind ~20 ms of host time (about
a thousand kernels launched from Python), so captioning is bound by the host. Here the prompt runs as usual
(eagerly, with every hook), the first decode step runs eagerly too (it warms up what the capture must not
allocate), the second is *captured* into a CUDA graph (recorded, not run) and every later step is one replay of
that graph. The host then only launches the graph and checks whether every row has stopped.

What it computes is ``model.generate(do_sample=False)``'s greedy decoding: the argmax of the last position's
logits (float32), rows that produced an end-of-sequence token continue with the pad token, decoding stops when
every row has stopped or after ``max_new_tokens``; ``min_new_tokens`` and ``suppress_tokens`` act as transformers'
logits processors of those names. The cache is a ``StaticCache`` of ``prompt + max_new_tokens`` positions with a
4-D mask that opens one position per step (built once: under ``sdpa`` from the prompt's mask, equal to what
transformers' ``create_masks_for_generate`` builds, else by that function), so attention runs over a fixed length
with the unwritten positions masked out: the same tokens, activations equal to the dynamic cache's up to float
rounding (``tests/trace/test_decode.py``; graph == eager on the GPU in ``benchmarks/bench_checks.py``). Between the
prompt and the graph's capture the host reads nothing from the device (:mod:`.static_cache`), so that it runs
the first step and records the graph while the device still runs the prompt.

Hooks on the stock modules run during the prompt and the first step and are recorded into the graph: a hook that
writes per-step results must index with :attr:`DecodeClock.step` (a device tensor holding the step the running
call produces: 0 for the prompt, ``k`` for the call that produces new token ``k``), never with a host counter.
Graphs are used by default only when every hook on the model belongs to a ``HookSet(..., graph_safe=True)``; any
other hook (an intervention that picks positions, a peer tool's hook) makes the decoding eager, still static.
:func:`greedy_generate` keeps the clock right on every path, including the fallback to ``model.generate`` for
what this decoder does not cover (:func:`~neuronscope.trace.decode_coverage.static_decode_blocker` says why).

Example:
    >>> clock = DecodeClock.on(model)
    >>> with HookSet(adapter, graph_safe=True) as hooks:   # buffer.index_copy_(1, clock.step, tensor[:, -1:])
    ...     generation = greedy_generate(model, processor, batch, max_new_tokens=20, clock=clock)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neuronscope.errors import InputError
from neuronscope.inputs.batch import Batch, Generation, _input_device, _tokenizer, to_model
from neuronscope.models.adapter import get_adapter
from neuronscope.trace.compiled_decoder import compile_backend, compiled_decoder, compiles_prompt
from neuronscope.trace.decode_coverage import static_decode_blocker
from neuronscope.trace.forward_options import attention_implementation, takes_logits_to_keep
from neuronscope.trace.graphs import StepReplayer, graphs_of, kept_graphs, model_key, release_path
from neuronscope.trace.greedy_choice import Picker, StopFlags, greedy_settings
from neuronscope.trace.hooks import HookSet, foreign_hooks
from neuronscope.trace.last_step import cache_keyword
from neuronscope.trace.sites import resolve_site
from neuronscope.trace.static_cache import drive, first_step_mask, new_static_cache


@dataclass
class DecodeClock:
    """``step [1]`` (int64, on the model's input device): the step that the running forward call produces."""

    step: torch.Tensor

    @classmethod
    def on(cls, model: nn.Module) -> DecodeClock:
        return cls(torch.zeros(1, dtype=torch.long, device=_input_device(model)))

    def on_device(self, device: torch.device) -> torch.Tensor:
        """The step as an index on ``device`` (the same tensor on the clock's own device)."""
        return self.step if self.step.device == device else self.step.to(device)


class StepBuffers:
    """One device buffer ``[batch, steps, width]`` per (site, layer), filled at the last position of every forward
    call at the :class:`DecodeClock`'s step: what ``capture(..., positions="last")`` keeps during ``generate``, in
    a form CUDA-graph replays can write (no per-call lists, clones or host work).

    Example:
        >>> buffers = StepBuffers(clock, steps=20)       # or all of it at once: buffered_generate
        >>> with HookSet(adapter, graph_safe=True) as hooks:
        ...     buffers.install(hooks, adapter, "neuron", range(adapter.n_layers))
        ...     generation = greedy_generate(model, processor, batch, max_new_tokens=20, clock=clock)
        >>> buffers.stack("neuron", generation.tokens.shape[1])      # [batch, steps, layers, d_ff]
    """

    def __init__(self, clock: DecodeClock, steps: int, dtype: torch.dtype | None = None):
        self.clock, self.steps, self.dtype = clock, steps, dtype
        self.buffers: dict[tuple[str, int], torch.Tensor] = {}

    def install(self, hooks: Any, adapter: Any, site: str, layers: Iterable[int]) -> None:
        """Hook ``site`` of each layer (``hooks``: a :class:`neuronscope.trace.hooks.HookSet`)."""
        for layer in layers:
            hooks.add(resolve_site(adapter, site, layer), self._keeper(site, layer))

    def _keeper(self, site: str, layer: int):
        key = (site, layer)

        def keep(tensor: torch.Tensor, call: Any) -> None:
            buffer = self.buffers.get(key)
            if buffer is None:
                buffer = self.buffers[key] = torch.zeros(tensor.shape[0], self.steps, tensor.shape[-1],
                                                         dtype=self.dtype or tensor.dtype, device=tensor.device)
            buffer.index_copy_(1, self.clock.on_device(tensor.device), tensor[:, -1:].to(buffer.dtype))
            return None

        return keep

    def get(self, site: str, layer: int) -> torch.Tensor | None:
        """``[batch, steps, width]`` (None if the layer never ran)."""
        return self.buffers.get((site, layer))

    def stack(self, site: str, steps: int, device: torch.device | None = None) -> torch.Tensor:
        """``[batch, steps, layers, width]`` of the first ``steps`` steps, layers in order."""
        layers = sorted(layer for name, layer in self.buffers if name == site)
        return torch.stack([self.buffers[(site, layer)][:, :steps].to(device) for layer in layers], 2)


class _StaticDecoder:
    """One batch's greedy decoding; :meth:`run` returns ``[B, prompt + steps]`` sequences."""

    def __init__(self, model: nn.Module, inputs: dict[str, torch.Tensor], max_new_tokens: int, pad_id: int,
                 clock: DecodeClock, pick: Picker):
        self.model, self.inputs, self.steps, self.clock = model, inputs, max_new_tokens, clock
        ids = inputs["input_ids"]
        self.device = ids.device
        self.rows, self.prompt = ids.shape
        self.pad = torch.full((), pad_id, dtype=torch.long, device=self.device)  # no host-to-device copy
        self.pad_id = pad_id
        self.pick, self.eos = pick, pick.eos
        self.settings = (pad_id, pick.settings)  # what a kept decoder must match to serve another call
        self.graphs: bool | None = None
        self.backend: str | None = None
        self.cache = new_static_cache(model.config, self.prompt + max_new_tokens, self.device)
        self.length = 0  # what the cache holds before the next call (told to the hooks: static_cache.drive)
        self.keyword = cache_keyword(model)
        self.keep = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}
        self.tokens = torch.full((self.rows, max_new_tokens), pad_id, dtype=torch.long, device=self.device)
        self.unfinished = torch.ones(self.rows, dtype=torch.bool, device=self.device)
        self.position: torch.Tensor | None = None
        # what the recorded step reads (kept by a KeptDecoding for the next call, refilled in place): its replayer,
        # its 4-D mask, the mask's column of the last prompt key and the token it feeds
        self.replayer: StepReplayer | None = None
        self.own_pool, self.runs = False, 0
        self.step_buffers: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def restart(self, inputs: dict[str, torch.Tensor]) -> None:
        """Set up a kept decoder for another batch of its shape: its inputs, no token yet, every row running."""
        self.inputs = inputs
        self.cache.reset()  # transformers' own: keys and values zeroed, step counters back to 0, in place
        self.tokens.fill_(self.pad_id)
        self.unfinished.fill_(True)

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        """Pick, pad the stopped rows, record the token at the clock's step and update who has stopped."""
        chosen = torch.where(self.unfinished, self.pick(logits, self.clock.step), self.pad)
        self.tokens.index_copy_(1, self.clock.step, chosen[:, None])
        if self.eos is not None:
            self.unfinished &= ~(chosen[:, None] == self.eos).any(-1)
        return chosen

    def _prefill(self) -> torch.Tensor:
        mask = self.inputs["attention_mask"]
        position = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        self.clock.step.zero_()
        inputs = {k: v for k, v in self.inputs.items() if k != "position_ids"}
        drive(self.cache, 0)
        out = self.model(**inputs, position_ids=position, use_cache=True, **{self.keyword: self.cache}, **self.keep)
        if self.position is None:
            self.position = position[:, -1:].clone()
        else:  # a kept decoder: its recorded step reads this tensor
            self.position.copy_(position[:, -1:])
        self.length = self.prompt
        return self._choose(out.logits[:, -1])

    def _decode_mask(self) -> torch.Tensor | None:
        """The 4-D mask of the first decode step: under ``sdpa`` built from the prompt's mask
        (:func:`~.static_cache.first_step_mask`: no host check), else by transformers (None where it builds none)."""
        from transformers.masking_utils import create_masks_for_generate

        width = self.prompt + self.steps
        if attention_implementation(self.model) == "sdpa":
            return first_step_mask(self.inputs["attention_mask"], width)
        grown = torch.cat([self.inputs["attention_mask"], self.inputs["attention_mask"].new_ones(self.rows, 1)], 1)
        embeds = torch.empty((self.rows, 1, 0), dtype=self.model.dtype, device=self.device)
        mask = create_masks_for_generate(self.model.config, embeds, grown, self.cache, self.position + 1)
        if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.shape[-1] != width or mask.shape[-2] != 1:
            return None
        return mask.clone()

    def run(self, graphs: bool, backend: str | None = None) -> torch.Tensor:
        """``backend``: the text decoder compiled with it runs the decode steps, and the prompt's forward (its image
        encoding included) too where :func:`~.compiled_decoder.compiles_prompt` (:mod:`.compiled_decoder`)."""
        # the prompt compiled too, or the steps only; a kept decoder's first prompt eagerly: it allocates the step
        # buffers, and traced then it would compile again at the next call, whose buffers exist (~60 s on a 7B)
        whole = backend is not None and compiles_prompt() and (not self.own_pool or self.runs > 0)
        self.runs += 1
        compiled = compiled_decoder(self.model, backend, images=whole) if backend else nullcontext()
        with compiled if whole else nullcontext():
            chosen = self._prefill()
            done = 1
            if self.steps > 1:  # whether the prompt's token stopped every row is read once the steps are queued
                stopped_at_prompt = ~self.unfinished.any()
                with nullcontext() if whole else compiled:
                    done = self._decode(chosen[:, None].clone(), graphs)
                done = 1 if bool(stopped_at_prompt) else done  # the steps after it only wrote padding
        sequences = torch.cat([self.inputs["input_ids"], self.tokens[:, :done]], 1)
        self.inputs = {}  # a kept decoder does not hold on to the batch (its pixels)
        if not self.own_pool:  # not kept: no cycle through the recorded step, the cache is freed with the decoder
            self.replayer = self.step_buffers = None
        return sequences

    def _forward_step(self, token: torch.Tensor, mask: torch.Tensor) -> None:
        """One decode step: the clock and the positions move on, the model runs, ``token`` becomes its choice."""
        self.clock.step.add_(1)
        self.position.add_(1)
        drive(self.cache, self.length)
        self.length += 1
        out = self.model(input_ids=token, attention_mask=mask, position_ids=self.position, use_cache=True,
                         **{self.keyword: self.cache}, **self.keep)
        token.copy_(self._choose(out.logits[:, -1])[:, None])

    def _decode(self, token: torch.Tensor, graphs: bool) -> int:
        if self.replayer is not None and self.step_buffers is not None:  # kept: refill what the step reads
            mask = self._decode_mask()
            if mask is not None:
                kept_mask, open_key, kept_token = self.step_buffers
                kept_mask.copy_(mask)
                open_key.copy_(mask[..., self.prompt - 1:self.prompt])
                kept_token.copy_(token)
                return self._steps(self.replayer)
        mask = self._decode_mask()
        if mask is None:  # transformers builds no 4-D mask here: grow the 2-D one, eagerly (its shape changes)
            grown = [self.inputs["attention_mask"]]

            def step() -> None:
                grown[0] = torch.cat([grown[0], grown[0].new_ones(self.rows, 1)], 1)
                self._forward_step(token, grown[0])

            return self._steps(StepReplayer(step, "the decode step", False))
        open_key = mask[..., self.prompt - 1:self.prompt].clone()  # the last prompt key is real in every row
        prompt = torch.full((1,), self.prompt, dtype=torch.long, device=self.device)

        def step() -> None:  # every operation reads and writes fixed buffers: safe to capture
            mask.index_copy_(-1, prompt + self.clock.step, open_key)  # the key this step writes (before the clock)
            self._forward_step(token, mask)

        self.step_buffers = (mask, open_key, token)
        self.replayer = StepReplayer(step, "the decode step", graphs, drain=False, own_pool=self.own_pool)
        return self._steps(self.replayer)

    def _steps(self, replayer: StepReplayer) -> int:
        """Run the step until ``max_new_tokens`` tokens or every row has stopped: the first eagerly (on a side
        stream when graphs follow), the second captured (recorded while the device still runs the prompt: no
        drain, :func:`~neuronscope.trace.graphs.capture`), the rest replayed (a kept decoder's later calls replay
        from their first step); the number of tokens produced.

        On a GPU whether every row has stopped is read one step late (:class:`StopFlags`), so that the next step
        is queued while the host waits: a step after the last needed one only writes padding, and is not counted."""
        done = 1
        flags = StopFlags(self.unfinished)
        while done < self.steps:
            replayer()
            done += 1
            stopped = flags.after_step()
            if stopped is not None:
                done -= stopped  # 1: the step just queued came after every row had stopped
                break
        return done


def _clocked_generate(model: nn.Module, processor: Any, batch: Batch, max_new_tokens: int, clock: DecodeClock | None,
                      **kwargs: Any) -> Generation:
    """``model.generate`` with the clock set before every forward call."""
    from neuronscope.inputs.batch import generate

    if clock is None:
        return generate(model, processor, batch, max_new_tokens=max_new_tokens, **kwargs)
    calls = [0]

    def tick(module: nn.Module, args: tuple, kwargs_: dict) -> None:
        clock.step.fill_(calls[0])
        calls[0] += 1

    handle = model.register_forward_pre_hook(tick, with_kwargs=True)
    try:
        return generate(model, processor, batch, max_new_tokens=max_new_tokens, **kwargs)
    finally:
        handle.remove()


@dataclass
class KeptDecoding:
    """A buffered decoding kept for the next call of the same shape (``buffered_generate(..., keep=True)``): the
    clock, the step buffers and the static decoder (its cache, its mask and token buffers, its decode step's CUDA
    graph). The next call refills them in place and replays the graph from its first decode step: no eager step
    and no capture."""

    clock: DecodeClock
    buffers: StepBuffers
    decoder: _StaticDecoder | None = None

    def close(self) -> None:
        """Let go of the decoder at once (its recorded step refers back to it: a cycle the garbage collector would
        free only later, with the cache's memory)."""
        if self.decoder is not None:
            self.decoder.replayer = self.decoder.step_buffers = None
            self.decoder = None


def _kept_decoding(model: nn.Module, batch: Batch, sites: Mapping[str, Iterable[int]], max_new_tokens: int,
                   dtype: torch.dtype | None, kwargs: dict[str, Any]) -> KeptDecoding:
    """The model's kept decoding for this call's shape, or a new one kept in its place (one per model)."""
    key = (tuple(batch.input_ids.shape), max_new_tokens, tuple((site, tuple(layers)) for site, layers in sites.items()),
           dtype, repr(sorted(kwargs.items())), model_key(model))
    kept = graphs_of(model, "decoding", limit=1)
    entry = kept.replayable(key)
    if entry is None:
        _close(kept)  # the decoding of another shape goes first, with its memory
        clock = DecodeClock.on(model)
        entry = kept.keep(key, KeptDecoding(clock, StepBuffers(clock, max_new_tokens, dtype)))
    return entry


def _close(kept: Any) -> None:
    for entry in kept.entries.values():
        entry.close()
    kept.entries.clear()


def release_kept_decoding(model: nn.Module) -> None:
    """Drop the decoding ``buffered_generate(..., keep=True)`` kept for ``model`` and give its memory back."""
    _close(graphs_of(model, "decoding", limit=1))
    release_path(model, "decoding")


def buffered_generate(model: nn.Module, processor: Any, batch: Batch, sites: Mapping[str, Iterable[int]],
                      max_new_tokens: int = 20, *, dtype: torch.dtype | None = None, keep: bool = False,
                      **kwargs: Any) -> tuple[Generation, StepBuffers]:
    """:func:`greedy_generate` with each ``site → layers`` of ``sites`` kept at the last position of every call in
    :class:`StepBuffers` (under a graph-safe hook set: on a GPU the decode steps still replay from a CUDA graph).

    ``keep``: keep the static cache, the step buffers and the decode step's CUDA graph for the next call of the
    same shape (batch and prompt length, sites, keywords, weights and graph-safe hooks), which then replays it
    from its first step: the same tokens and buffers, without the eager first step and the capture. That is ~40 ms
    of host time for a 7B decoding on an H200, but there it was already hidden behind the prompt's device work
    (batch 5: 1 % faster); it counts where the host is the limit (small models and batches). One decoding is kept per model; its memory (the cache: ``2 · layers · batch ·
    positions · d_model`` values) stays allocated until the next buffered decoding of the model that does not
    reuse it (kept or not: it goes first) or :func:`release_kept_decoding`; the buffers returned are rewritten by
    the next kept call.

    Example:
        >>> generation, buffers = buffered_generate(model, processor, batch, {"neuron": range(adapter.n_layers)})
        >>> buffers.stack("neuron", generation.tokens.shape[1])      # [batch, steps, layers, d_ff]
    """
    adapter = get_adapter(model)
    if not keep and kept_graphs(model, "decoding"):  # at most one decoding's memory at a time
        release_kept_decoding(model)
    kept = _kept_decoding(model, batch, sites, max_new_tokens, dtype, kwargs) if keep else None
    clock = kept.clock if kept else DecodeClock.on(model)
    buffers = kept.buffers if kept else StepBuffers(clock, max_new_tokens, dtype)
    with HookSet(adapter, graph_safe=True) as hooks:
        for site, layers in sites.items():
            buffers.install(hooks, adapter, site, layers)
        generation = greedy_generate(model, processor, batch, max_new_tokens, clock=clock, kept=kept, **kwargs)
    return generation, buffers


@torch.no_grad()
def greedy_generate(model: nn.Module, processor: Any, batch: Batch, max_new_tokens: int = 20, *,
                    clock: DecodeClock | None = None, graphs: bool | None = None, compile: bool | str = False,
                    kept: KeptDecoding | None = None, **kwargs: Any) -> Generation:
    """Greedy decoding of a left-padded batch (as :func:`neuronscope.inputs.generate`), with a static cache and
    CUDA-graph replays where it can (see the module docstring).

    Args:
        clock: kept equal to the step each forward call produces (hooks index per-step buffers with it).
        graphs: replay the decode steps from a CUDA graph; default: on a CUDA model whose only hooks are those of
            graph-safe :class:`~neuronscope.trace.hooks.HookSet` s (``HookSet(adapter, graph_safe=True)``). ``False``
            runs the same static decoding eagerly (what the tests compare with ``model.generate``); ``True`` forces
            graphs whatever hooks there are.
        compile: the prompt's forward and the decode steps call the text decoder ``torch.compile``'d (True:
            inductor; or a backend's name),
            :mod:`neuronscope.trace.compiled_decoder`: fewer, fused kernels per step, one compilation per shape and
            set of hooks. Not where the decoding falls back to ``model.generate``.
        kept: the decoder kept from an earlier call of this shape, or where to keep this one
            (:func:`buffered_generate`'s ``keep``; its clock must be ``clock``).
        kwargs: ``min_new_tokens`` / ``suppress_tokens``; any other ``generate`` keyword falls back to
            ``model.generate``.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    backend = compile_backend(compile)
    moved = to_model(batch, model)
    if static_decode_blocker(model, moved, kwargs) is not None:
        return _clocked_generate(model, processor, moved, max_new_tokens, clock, **kwargs)
    clock = clock or DecodeClock.on(model)
    foreign = foreign_hooks(model)
    if backend and foreign:  # host state read by a hook would be a constant of the compiled code
        raise InputError("compile= decodes under graph-safe hooks only (HookSet(adapter, graph_safe=True), a "
                         "steady intervention); a hook that picks positions or counts calls on the host would "
                         "compile again at every step: decode without compile=")
    if graphs is None:  # a hook that picks positions on the host would be frozen at the captured step
        graphs = moved.input_ids.device.type == "cuda" and foreign == 0
    pad_id, pick = greedy_settings(model, processor, kwargs, moved.input_ids.device)
    decoder = kept.decoder if kept is not None else None
    if decoder is not None and (decoder.settings, decoder.graphs, decoder.backend) == (
            (pad_id, pick.settings), graphs, backend):
        decoder.restart(moved.inputs)
    else:
        if kept is not None:  # kept for other settings: let it go first, with its memory
            kept.close()
        decoder = _StaticDecoder(model, moved.inputs, max_new_tokens, pad_id, clock, pick)
        decoder.graphs, decoder.backend = graphs, backend
        if kept is not None:
            decoder.own_pool, kept.decoder = True, decoder
    sequences = decoder.run(graphs, backend)
    texts = _tokenizer(processor).batch_decode(sequences[:, moved.seq_len:], skip_special_tokens=True)
    return Generation(sequences, moved.seq_len, [text.strip() for text in texts])
