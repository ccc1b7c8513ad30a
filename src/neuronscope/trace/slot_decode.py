"""Greedy decoding of many prompts through a cache of a few: continuous batching with the prefill riding along.

:func:`neuronscope.trace.decode.greedy_generate` decodes a batch at once: its KV cache holds every prompt of the
batch, so memory grows with the batch, and each decode step of a small batch reads every weight for a handful of
tokens. Here every call of the model is one packed sequence (:mod:`neuronscope.trace.slot_schedule`): one decode
row per slot and a chunk of prompt tokens still to be read. The cache holds ``slots`` prompts
(``slots × (prompt + new tokens)`` positions, and one trash position), prompts enter a slot as one leaves, and the
chunk's prompt tokens ride along with the weights the decode rows read anyway (not for free on the hardware
measured: see "When to use it" below).

What it computes is what :func:`~neuronscope.trace.decode.greedy_generate` computes, prompt by prompt: the argmax
of the logits at each prompt's last position, then of each new token's, with ``min_new_tokens`` /
``suppress_tokens``, a prompt stopping at an end-of-sequence token (padding after it). Attention is over the packed
cache with a 4-D mask that lets each row see its own slot's positions up to its own, so the activations equal the
batched ones up to float rounding (``tests/trace/test_slot_decode.py``). Each call's plan reaches the device in one
copy; on a GPU the call (embedding, mask, forward, choice, and the hooks that keep the site at the read-out rows) is
replayed from one CUDA graph, and the host learns that a prompt stopped early two calls late, without waiting.

When to use it: when the batch's cache does not fit (:func:`buffered_decode` switches by itself then), or to
bound memory whatever the batch. It is slower than the batched decoding at equal memory on the hardware measured
(BENCHMARKS.md: LLaVA-1.5-7B shape on an H200, 16 images through 3 slots at 1.16x the weights' memory, 9 images/s
against 28 batched at 1.49x): every packed call pays the decode step's weight reads and ~1,000 small kernels
(12 ms at 132 rows, of which 3.3 ms is attention over the whole packed cache), and reading a prompt takes
``prompt / chunk`` such calls, where the batched prefill reads it in one large, efficient call.

Example:
    >>> generation, buffers = slot_buffered_generate(model, processor, batch, {"neuron": range(adapter.n_layers)},
    ...                                              max_new_tokens=20, slots=4)
    >>> buffers.get("neuron", 3)               # [batch, 20, d_ff]: what buffered_generate keeps
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from neuronscope.errors import InputError
from neuronscope.inputs.batch import Batch, Generation, _tokenizer, to_model
from neuronscope.models.adapter import get_adapter
from neuronscope.trace.decode import StepBuffers, buffered_generate
from neuronscope.trace.decode_coverage import static_decode_blocker
from neuronscope.trace.forward_options import attention_implementation, takes_logits_to_keep
from neuronscope.trace.graphs import BUCKET, StepReplayer
from neuronscope.trace.greedy_choice import LateReads, Picker, greedy_settings
from neuronscope.trace.hooks import HookSet, foreign_hooks
from neuronscope.trace.last_step import cache_keyword
from neuronscope.trace.prompt_embeddings import prompt_embeddings
from neuronscope.trace.sites import resolve_site
from neuronscope.trace.slot_schedule import PlanLayout, SlotSchedule, StepPlan

_log = logging.getLogger(__name__)


def slot_blocker(model: nn.Module, batch: Batch, generate_kwargs: dict[str, Any]) -> str | None:
    """Why :func:`slot_buffered_generate` cannot decode this call (None: it can): what stops the static decoder
    (:func:`~neuronscope.trace.decode_coverage.static_decode_blocker`), a hook that is not graph-safe (an
    intervention that picks its positions would name rows of the packed calls, not positions of a prompt), or an
    attention implementation that takes no 4-D mask of ours."""
    static = static_decode_blocker(model, batch, generate_kwargs)
    if static is not None:
        return static
    if foreign_hooks(model):
        return "hooks on the model that are not graph-safe (their positions would be rows of the packed calls)"
    attention = attention_implementation(model)
    if attention not in ("sdpa", "eager"):
        return f"attention '{attention}' (the packed mask is for 'sdpa' and 'eager')"
    return None


def chunk_for(slots: int, prompt: int, steps: int) -> int:
    """Prefill rows per call: enough that a prompt is read in about the calls a slot takes to decode
    (``slots · prompt / (steps - 1)``), a multiple of :data:`~neuronscope.trace.graphs.BUCKET`, at most the prompt
    rounded up to one."""
    want = slots * prompt / max(steps - 1, 1)
    ceiling = -(-prompt // BUCKET) * BUCKET
    return int(min(max(BUCKET, -(-int(want) // BUCKET) * BUCKET), ceiling))


class SlotCache:
    """A KV cache of the packed calls: per layer ``[1, kv heads, slots · cache_len + 1, head dim]``, written at
    the plan's ``write`` positions (what transformers' attention calls ``update`` with), read whole."""

    def __init__(self, write: torch.Tensor, positions: int):
        self.write, self.positions = write, positions
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx not in self.keys:
            shape = (*key_states.shape[:2], self.positions, key_states.shape[-1])
            self.keys[layer_idx] = key_states.new_zeros(shape)
            self.values[layer_idx] = value_states.new_zeros((*shape[:3], value_states.shape[-1]))
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys.index_copy_(2, self.write, key_states)
        values.index_copy_(2, self.write, value_states)
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions come with every call; nothing reads this


class _Packed:
    """The static buffers of one run and the packed call that reads and writes only them."""

    def __init__(self, model: nn.Module, layout: PlanLayout, steps: int, pad: int, picker: Picker,
                 eos: torch.Tensor | None, width: int, dtype: torch.dtype, device: torch.device):
        self.model, self.layout, self.steps, self.picker, self.eos = model, layout, steps, picker, eos
        self.plan = torch.zeros(layout.size, dtype=torch.long, device=device)
        self.fields = {name: self.plan[start:stop] for name, (start, stop) in layout.offsets().items()}
        positions = layout.trash + 1
        self.cache = SlotCache(self.fields["write"], positions)
        key = torch.arange(positions, device=device)
        self.key_slot = torch.where(key == layout.trash, layout.slots, key // layout.cache_len)
        self.key_pos = torch.where(key == layout.trash, 0, key % layout.cache_len)
        self.pool = torch.zeros(layout.trash + 1, width, dtype=dtype, device=device)  # prompt embeddings per slot
        self.pad = torch.tensor(pad, dtype=torch.long, device=device)
        self.next_token = torch.full((layout.slots + 1,), pad, dtype=torch.long, device=device)
        self.unfinished = torch.ones(layout.slots + 1, dtype=torch.bool, device=device)
        self.tokens = torch.full(((layout.slots + 1) * (steps + 1),), pad, dtype=torch.long, device=device)
        self.flat = torch.zeros(layout.reads, dtype=torch.long, device=device)  # read-out -> (slot, step) row
        self.stage: dict[tuple[str, int], torch.Tensor] = {}
        self.keyword = cache_keyword(model)
        self.keep_logits = takes_logits_to_keep(model)
        self.bool_mask = attention_implementation(model) == "sdpa"
        self.embed = model.get_input_embeddings()

    def token_rows(self, slot: int) -> torch.Tensor:
        return self.tokens.view(self.layout.slots + 1, self.steps + 1)[slot, :self.steps]

    def keeper(self, key: tuple[str, int]):
        """A hook callback: the site at the read-out rows into ``stage[key]`` (``[slots + 1, steps + 1, width]``)."""

        def keep(tensor: torch.Tensor, call: Any) -> None:
            stage = self.stage.get(key)
            if stage is None:
                stage = self.stage[key] = tensor.new_zeros((self.layout.slots + 1) * (self.steps + 1),
                                                           tensor.shape[-1])
            stage.index_copy_(0, self.flat, tensor[0].index_select(0, self.fields["read_rows"]))
            return None

        return keep

    def staged(self, key: tuple[str, int], slot: int) -> torch.Tensor:
        return self.stage[key].view(self.layout.slots + 1, self.steps + 1, -1)[slot, :self.steps]

    def __call__(self) -> None:
        f, slots = self.fields, self.layout.slots
        ids = self.next_token.index_select(0, f["q_slot"][:slots])
        embeds = torch.cat([self.embed(ids).to(self.pool.dtype), self.pool.index_select(0, f["src"])])[None]
        allowed = (self.key_slot[None] == f["q_slot"][:, None]) & (self.key_pos[None] <= f["q_pos"][:, None])
        if self.bool_mask:
            mask = allowed[None, None]
        else:
            mask = torch.zeros(allowed.shape, dtype=embeds.dtype, device=embeds.device)
            mask = mask.masked_fill(~allowed, torch.finfo(embeds.dtype).min)[None, None]
        self.flat.copy_(f["read_dest"] * (self.steps + 1) + f["read_step"])
        keep = {"logits_to_keep": f["read_rows"]} if self.keep_logits else {}
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=f["q_pos"][None], use_cache=True,
                         **{self.keyword: self.cache}, **keep)
        logits = out.logits[0] if self.keep_logits else out.logits[0].index_select(0, f["read_rows"])
        alive = f["read_first"].bool() | self.unfinished.index_select(0, f["read_dest"])
        chosen = torch.where(alive, self.picker(logits, f["read_step"]), self.pad)
        self.tokens.index_copy_(0, self.flat, chosen)
        self.next_token.index_copy_(0, f["read_dest"], chosen)
        if self.eos is not None:
            alive = alive & ~(chosen[:, None] == self.eos).any(-1)
        self.unfinished.index_copy_(0, f["read_dest"], alive)


class _LateStops:
    """Which slots stopped at an end-of-sequence token, read ``lag`` calls late on a GPU (:class:`LateReads`: the
    host never drains the queue); at once on a CPU."""

    def __init__(self, packed: _Packed, lag: int = 2):
        self.packed = packed
        self.reads = LateReads(lag if packed.unfinished.is_cuda else 0)

    def after_call(self, decoding: dict[int, int]) -> list[tuple[int, int]]:
        """The (slot, prompt) pairs, of calls now ``lag`` old, whose prompt had stopped by the end of that call."""
        if self.packed.eos is None or not decoding:
            return []
        ready = self.reads.push(self.packed.unfinished[:self.packed.layout.slots], dict(decoding))
        return [(slot, prompt) for host, held in ready for slot, prompt in held.items() if not bool(host[slot])]


class _Run:
    """One call of :func:`slot_buffered_generate`: admit prompts, run the packed calls, park finished prompts."""

    def __init__(self, model: nn.Module, batch: Batch, packed: _Packed, schedule: SlotSchedule, group: int):
        self.model, self.batch, self.packed, self.schedule, self.group = model, batch, packed, schedule, group
        self.embedded: dict[int, torch.Tensor] = {}
        rows = len(batch)
        device = packed.plan.device
        self.out_tokens = torch.full((rows, packed.steps), int(packed.pad), dtype=torch.long, device=device)
        self.out: dict[tuple[str, int], torch.Tensor] = {}

    def _embedding(self, prompt: int) -> torch.Tensor:
        if prompt not in self.embedded:  # the next few prompts at once (the vision tower batches them)
            rows = list(range(prompt, min(prompt + self.group, len(self.batch))))
            embeds = prompt_embeddings(self.model, self.batch.select(rows))
            for row, embed in zip(rows, embeds, strict=True):
                length = int(self.batch.lengths[row])
                self.embedded[row] = embed[embed.shape[0] - length:]  # left padding
        return self.embedded.pop(prompt)

    def admit(self, plan: StepPlan) -> None:
        packed = self.packed
        for slot, prompt in plan.admitted:
            embed = self._embedding(prompt)
            start = slot * packed.layout.cache_len
            packed.pool[start:start + embed.shape[0]].copy_(embed)
            packed.token_rows(slot).fill_(int(packed.pad))
            for key in packed.stage:  # steps a prompt that stops early never runs keep zeros, not the last prompt's
                packed.staged(key, slot).zero_()

    def park(self, finished: Iterable[tuple[int, int]]) -> None:
        packed = self.packed
        for slot, prompt in finished:
            self.out_tokens[prompt].copy_(packed.token_rows(slot))
            for key in packed.stage:
                if key not in self.out:
                    self.out[key] = packed.stage[key].new_zeros(len(self.batch), packed.steps,
                                                                packed.stage[key].shape[-1])
                self.out[key][prompt].copy_(packed.staged(key, slot))

    def run(self, graphs: bool) -> None:
        packed, schedule = self.packed, self.schedule
        stops = _LateStops(packed)
        call = StepReplayer(packed, "the packed decode call", graphs)
        while (plan := schedule.plan()) is not None:
            self.admit(plan)
            host = torch.tensor(plan.packed(), dtype=torch.long)
            packed.plan.copy_(host.pin_memory() if packed.plan.is_cuda else host, non_blocking=packed.plan.is_cuda)
            call()
            self.park(plan.finished)
            self.park([(slot, prompt) for slot, prompt in stops.after_call(plan.decoding)
                       if schedule.stop(slot, prompt)])


def cache_bytes(model: nn.Module, positions: int) -> int:
    """Bytes of a KV cache of ``positions`` positions of one prompt: keys and values of every attention layer, at
    the adapter's key/value heads and head width of each."""
    adapter = get_adapter(model)
    itemsize = model.get_input_embeddings().weight.element_size()  # the language model's (a VLM's tower may differ)
    width = sum(2 * adapter.n_kv_heads_of(layer) * adapter.head_dim_of(layer) for layer in adapter.attention_layers)
    return width * itemsize * positions


#: what a prompt in flight takes beyond its cache (its sites kept per step, prefill activations), as a share of it
MARGIN = 0.5


def slots_that_fit(rows: int, per_prompt: int, free: int) -> int | None:
    """None when ``rows`` prompts of ``per_prompt`` cache bytes each (plus :data:`MARGIN`) fit in ``free`` bytes;
    else the prompts that do (at least 1)."""
    need = per_prompt * (1 + MARGIN)
    if rows * need <= free:
        return None
    return max(1, min(rows - 1, int(free // need)))


@torch.no_grad()
def slot_buffered_generate(model: nn.Module, processor: Any, batch: Batch, sites: Mapping[str, Iterable[int]],
                           max_new_tokens: int = 20, *, slots: int | None = None, chunk: int | None = None,
                           dtype: torch.dtype | None = None, graphs: bool | None = None,
                           **kwargs: Any) -> tuple[Generation, StepBuffers]:
    """:func:`~neuronscope.trace.decode.buffered_generate` through ``slots`` cache slots (see the module docstring):
    the same tokens, and the same ``site → layers`` kept at each new token's producing position, ``[batch, steps,
    width]`` per (site, layer).

    Args:
        slots: prompts decoded at once (the cache holds this many); default as many as fit in the free device
            memory (:func:`slots_that_fit`), at least 1.
        chunk: prompt tokens read per call; default :func:`chunk_for`.
        dtype: the kept sites' dtype (default the model's).
        graphs: replay each call from a CUDA graph (default: on a CUDA model whose hooks are all graph-safe).
        kwargs: ``min_new_tokens`` / ``suppress_tokens``.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    moved = to_model(batch, model)
    why = slot_blocker(model, moved, kwargs)
    if why is not None:
        raise ValueError(f"slot decoding cannot run this call: {why}; decode it with buffered_generate")
    adapter = get_adapter(model)
    device = moved.input_ids.device
    lengths = [int(length) for length in moved.lengths]
    cache_len = max(lengths) + max_new_tokens
    if slots is None:
        slots = _fitting(model, device, len(lengths), cache_len) or len(lengths)
    slots = min(slots, len(lengths))
    layout = PlanLayout(slots, chunk_for(slots, max(lengths), max_new_tokens) if chunk is None else chunk, cache_len)
    pad_id, picker = greedy_settings(model, processor, kwargs, device)
    eos = picker.eos
    table = model.get_input_embeddings().weight  # the pool holds what the decoder takes: the embeddings' dtype
    packed = _Packed(model, layout, max_new_tokens, pad_id, picker, eos, table.shape[-1], table.dtype, device)
    if graphs is None:
        graphs = device.type == "cuda" and foreign_hooks(model) == 0
    run = _Run(model, moved, packed, SlotSchedule(lengths, layout, max_new_tokens), group=slots)
    with HookSet(adapter, graph_safe=True, owned=True) as hooks:
        for site, layers in sites.items():
            for layer in layers:
                hooks.add(resolve_site(adapter, site, layer), packed.keeper((site, layer)))
        run.run(graphs)
    tokens = run.out_tokens.cpu()
    done = _produced(tokens, eos.tolist() if eos is not None else [])
    sequences = torch.cat([moved.input_ids, run.out_tokens[:, :done]], 1)
    texts = _tokenizer(processor).batch_decode(tokens[:, :done], skip_special_tokens=True)
    buffers = StepBuffers(None, max_new_tokens, dtype)  # type: ignore[arg-type]  # filled, never hooked
    buffers.buffers = {key: value if dtype is None else value.to(dtype) for key, value in run.out.items()}
    return Generation(sequences, moved.seq_len, [text.strip() for text in texts]), buffers


def _produced(tokens: torch.Tensor, eos: list[int]) -> int:
    """The steps a batched greedy decode would have run: until every row has chosen an end-of-sequence token."""
    steps = tokens.shape[1]
    if not eos:
        return steps
    stopped = torch.isin(tokens, torch.tensor(eos))
    last = torch.where(stopped.any(1), stopped.float().argmax(1) + 1, torch.full((tokens.shape[0],), steps))
    return int(last.max()) if tokens.shape[0] else 0


def _fitting(model: nn.Module, device: torch.device, rows: int, cache_len: int) -> int | None:
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # held by PyTorch, unused
    return slots_that_fit(rows, cache_bytes(model, cache_len), free)


def slot_choice(model: nn.Module, batch: Batch, max_new_tokens: int, slots: int | str | None,
                generate_kwargs: dict[str, Any]) -> int | None:
    """The slots :func:`buffered_decode` decodes ``batch`` through, or None for the batched decoding.

    ``slots``: None (batched), a count (refused in one line where :func:`slot_blocker` says why), or ``"auto"``:
    batched while the batch's cache fits in the free device memory (it is the faster: one prefill of every prompt,
    then decode steps that read the weights once for the whole batch), else the slots that fit
    (:func:`slots_that_fit`), on a model that slot decoding covers."""
    if slots is None:
        return None
    if slots != "auto":
        if not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be a positive count, 'auto' or None, not {slots!r}")
        return min(slots, len(batch))
    moved = to_model(batch, model)
    if moved.input_ids.device.type != "cuda":
        return None
    fitting = _fitting(model, moved.input_ids.device, len(moved), int(moved.lengths.max()) + max_new_tokens)
    # the blocker (passes over every module) only where slots would be chosen: the batched path checks its own
    return None if fitting is None or slot_blocker(model, moved, generate_kwargs) is not None else fitting


def buffered_decode(model: nn.Module, processor: Any, batch: Batch, sites: Mapping[str, Iterable[int]],
                    max_new_tokens: int = 20, *, slots: int | str | None = "auto", dtype: torch.dtype | None = None,
                    **kwargs: Any) -> tuple[Generation, StepBuffers]:
    """:func:`slot_buffered_generate` or :func:`~neuronscope.trace.decode.buffered_generate`, as
    :func:`slot_choice` says: the same tokens and buffers either way. ``compile`` (batched decoding only: its
    decode steps through the compiled text decoder) is refused with slots asked for, and not used where "auto"
    chose slots (a note says so). ``keep``: the batched decoding is kept for the next call of its shape
    (:func:`~neuronscope.trace.decode.buffered_generate`); slot decoding keeps nothing."""
    graphs = kwargs.pop("graphs", None)
    compile = kwargs.pop("compile", False)
    keep = kwargs.pop("keep", False)
    chosen = slot_choice(model, batch, max_new_tokens, slots, kwargs)
    if chosen is None:
        return buffered_generate(model, processor, batch, sites, max_new_tokens, dtype=dtype, graphs=graphs,
                                 compile=compile, keep=keep, **kwargs)
    if compile:
        if slots != "auto":
            raise InputError(f"compile= applies to the batched decoding, not to slot decoding (slots={slots}): "
                             "pass slots=None to compile, or compile=False")
        _log.warning("decoding through %d slots (the batch's cache does not fit): compile= is not used", chosen)
    return slot_buffered_generate(model, processor, batch, sites, max_new_tokens, slots=chosen, dtype=dtype,
                                  graphs=graphs, **kwargs)
