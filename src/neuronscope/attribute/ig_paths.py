"""The three paths of :func:`~neuronscope.attribute.integrated_gradients.integrated_gradients` (sequence, packed,
plain) and what they share: per-row scaling of one site with the scaled values as autograd leaves, one example's
unpadded inputs, the prefix cache and the accumulation of the gradients of ``P`` over the steps.

The formulas and the three paths are described in :mod:`neuronscope.attribute.integrated_gradients`; each path
returns ``[layers, d_ff]`` scores of one (example, target).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuronscope.attribute.ig_segments import chunk_grads, chunk_layout, entry_prefix, target_probability
from neuronscope.attribute.prefix_rows import (
    MASKED_ATTENTION,
    RowPlanner,
    rows_mask,
    shared_prefix_mask,
)
from neuronscope.errors import NeuronscopeError, PositionError
from neuronscope.inputs import Batch
from neuronscope.models.adapter import get_adapter
from neuronscope.runs.batching import AdaptiveBatcher, free_memory, is_out_of_memory
from neuronscope.trace.forward_options import attention_implementation
from neuronscope.trace.last_step import cache_keyword, returned_cache
from neuronscope.trace.layer_entry import can_enter
from neuronscope.trace.positions import CallState

_TEXT_KEYS = ("input_ids", "attention_mask", "position_ids")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32 for probabilities and sums (bf16 models), float64 kept."""
    return torch.promote_types(dtype, torch.float32)


@dataclass
class _RowScaler:
    """Per-row scaling of one position of a site, with the scaled values as autograd leaves.

    ``plan[layer] = (rows [r], alphas [r])``: in the running forward, row ``rows[j]`` gets layer ``layer``'s site
    at ``position`` (None = the call's last position) replaced by ``alphas[j] · a``, a leaf requiring grad.
    After the forward, ``leaves[layer]`` are those leaves and ``activations[layer]`` the unscaled ``a [r, d_ff]``.
    """

    position: int | None = None
    plan: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    leaves: dict[int, torch.Tensor] = field(default_factory=dict)
    activations: dict[int, torch.Tensor] = field(default_factory=dict)
    tokens: bool = False  # rows are the query tokens of batch row 0 (the "sequence" path), not batch rows

    def start(self, plan: dict[int, tuple[torch.Tensor, torch.Tensor]], position: int | None = None,
              tokens: bool = False) -> None:
        self.plan, self.position, self.tokens = plan, position, tokens
        self.leaves, self.activations = {}, {}

    def stop(self) -> None:
        self.plan = {}

    def callback(self, layer: int) -> Callable[[torch.Tensor, CallState], torch.Tensor | None]:
        """The site hook of ``layer`` (for :meth:`HookSet.add`)."""

        def scale(tensor: torch.Tensor, call: CallState) -> torch.Tensor | None:
            if layer not in self.plan:
                return None
            rows, alphas = self.plan[layer]
            rows = rows.to(tensor.device)
            if self.tokens:  # rows are query tokens of one sequence: [1, R, d_ff]
                where = (torch.zeros_like(rows), rows)
            else:
                position = tensor.shape[1] - 1 if self.position is None else self.position
                where = (rows, torch.full_like(rows, position))
            original = tensor[where].detach()  # [r, d_ff]
            leaf = (original * alphas.to(tensor.device, tensor.dtype)[:, None]).requires_grad_(True)
            self.activations[layer], self.leaves[layer] = original, leaf
            return tensor.index_put(where, leaf)

        return scale


def _check_text_inputs(batch: Batch) -> None:
    extra = sorted(set(batch.inputs) - set(_TEXT_KEYS) - {"token_type_ids"})
    if extra:
        raise NeuronscopeError(
            f"integrated_gradients runs on text inputs; this batch also has {', '.join(extra)} (a vision-language "
            "batch?). Use 'gradient_x_activation' or 'contribution' for such inputs"
        )


def _example(batch: Batch, row: int, position: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Row ``row`` without its padding: ``ids [n]``, ``position_ids [n]`` and the scored position among them."""
    ids = batch.input_ids[row]
    mask = batch.inputs.get("attention_mask")
    real = torch.arange(ids.shape[0], device=ids.device) if mask is None else mask[row].nonzero()[:, 0].to(ids.device)
    hits = (real == position).nonzero()
    if hits.numel() == 0:
        raise PositionError(
            f"target position {position} (row {row}) is a padding position: targets must sit on real tokens"
        )
    position_ids = batch.inputs.get("position_ids")
    positions = torch.arange(real.numel(), device=ids.device) if position_ids is None else position_ids[row, real]
    return ids[real], positions, int(hits[0, 0])


def _accumulate(scaler: _RowScaler, probability: torch.Tensor, grad_sums: dict[int, torch.Tensor],
                activations: dict[int, torch.Tensor]) -> None:
    """Backward of ``Σ P`` to this chunk's leaves only; add each layer's gradients over its rows."""
    layers = list(scaler.leaves)
    grads = torch.autograd.grad(probability.sum(), [scaler.leaves[layer] for layer in layers])
    for layer, grad in zip(layers, grads, strict=True):
        grad = grad.to(_work_dtype(grad.dtype)).sum(0).cpu()
        grad_sums[layer] = grad_sums[layer] + grad if layer in grad_sums else grad
        activations.setdefault(layer, scaler.activations[layer][0].to(grad.dtype).cpu())


def _prefix_cache(model: nn.Module, ids: torch.Tensor, positions: torch.Tensor, scored: int):
    """The KV cache of the positions before the scored one (None when there are none)."""
    if scored == 0:
        return None
    with torch.no_grad():  # no attention mask: there is no padding, and transformers would check its values
        out = model(input_ids=ids[None, :scored], position_ids=positions[None, :scored], use_cache=True)
    return returned_cache(out)


def _layer_major_rows(layers: list[int], alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``(l0, k0..), (l1, k0..), ...``: their layer and α, ``[layers · steps]`` each."""
    return torch.tensor(layers).repeat_interleave(alphas.numel()), alphas.repeat(len(layers))


def _add_chunk(sums: tuple[torch.Tensor, torch.Tensor] | None, scaler: _RowScaler, plan: dict, grads: tuple,
               slot_of: dict[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(activations, gradient sums)`` ``[layers, d_ff]`` with one chunk's gradients added (summed over its rows)
    and its layers' unscaled activations kept (on the device; created by the first chunk)."""
    if sums is None:
        work = _work_dtype(grads[0].dtype)
        grad_sums = torch.zeros(len(slot_of), grads[0].shape[-1], dtype=work, device=grads[0].device)
        sums = (torch.zeros_like(grad_sums), grad_sums)
    activations, grad_sums = sums
    for layer, grad in zip(plan, grads, strict=True):
        grad_sums[slot_of[layer]] += grad.to(grad_sums.dtype).sum(0)
        activations[slot_of[layer]] = scaler.activations[layer][0].to(grad_sums.dtype)
    return sums


def _ig_packed(model: nn.Module, scaler: _RowScaler, ids: torch.Tensor, positions: torch.Tensor, scored: int,
               token: int, layers: list[int], alphas: torch.Tensor, batch_size: int) -> torch.Tensor:
    """NA ``[layers, d_ff]`` of one (example, target): prefix once (KV cache), then packed (layer, step) rows."""
    ids, positions = ids[: scored + 1], positions[: scored + 1]
    cache = _prefix_cache(model, ids, positions, scored)
    steps = alphas.numel()
    row_layer, row_alpha = _layer_major_rows(layers, alphas)
    grad_sums: dict[int, torch.Tensor] = {}
    activations: dict[int, torch.Tensor] = {}

    def run_chunk(chunk: list[int]) -> None:
        start, stop = chunk[0], chunk[-1] + 1  # chunks are consecutive rows
        chunk_layer, chunk_alpha = row_layer[start:stop], row_alpha[start:stop]
        rows = chunk_layer.numel()
        plan = {}
        for layer in chunk_layer.unique().tolist():
            where = (chunk_layer == layer).nonzero()[:, 0]
            plan[layer] = (where, chunk_alpha[where])
        if cache is not None:  # only the scored position runs; the prefix comes from the expanded cache
            step_cache = copy.deepcopy(cache)
            step_cache.batch_repeat_interleave(rows)
            kwargs: dict[str, Any] = dict(input_ids=ids[None, scored:].expand(rows, -1),
                                          position_ids=positions[None, scored:].expand(rows, -1),
                                          use_cache=True)
            kwargs[cache_keyword(model)] = step_cache
        else:  # no cache available (or nothing before the scored position): run the truncated prompt
            kwargs = dict(input_ids=ids[None].expand(rows, -1), position_ids=positions[None].expand(rows, -1))
        kwargs["attention_mask"] = torch.ones(rows, scored + 1, dtype=torch.long, device=ids.device)
        scaler.start(plan)
        try:
            with torch.enable_grad():
                logits = model(**kwargs).logits[:, -1]
                probability = target_probability(logits, token)
                chunk_sums: dict[int, torch.Tensor] = {}
                _accumulate(scaler, probability, chunk_sums, activations)
        finally:
            scaler.stop()
        for layer, grads in chunk_sums.items():  # added only once the chunk succeeded (OOM back-off retries it)
            grad_sums[layer] = grads if layer not in grad_sums else grad_sums[layer] + grads

    # On out-of-memory the chunk is retried at half the size (neuronscope.runs.batching); results are the same.
    for _ in AdaptiveBatcher(min(batch_size, row_layer.numel())).map(list(range(row_layer.numel())), run_chunk):
        pass
    return torch.stack([activations[layer] * grad_sums[layer] / steps for layer in layers])


def _ig_sequence(model: nn.Module, scaler: _RowScaler, ids: torch.Tensor, positions: torch.Tensor, scored: int,
                 token: int, layers: list[int], alphas: torch.Tensor, planner: RowPlanner) -> torch.Tensor | None:
    """NA ``[layers, d_ff]`` of one (example, target): the prefix once, then every (layer, step) row as one query
    token of a single sequence that sees the shared cache and itself only. None: the model cannot take the mask.

    Decoders with full attention in every layer (:func:`~neuronscope.trace.layer_entry.can_enter`) run the scored
    token with the prefix, keeping each layer's input there, and a chunk's rows join the decoder in segments at
    their own layers (:mod:`neuronscope.attribute.ig_segments`: below its layer a row would compute what the
    scored token computed)."""
    device = ids.device
    if attention_implementation(model) not in MASKED_ATTENTION or get_adapter(model).position_bias:
        return None  # the 4-D mask cannot be taken, or ALiBi would see the rows at other positions
    row_layer, row_alpha = _layer_major_rows(layers, alphas)
    # on the device before any forward is queued: no host-to-device copy (a stream synchronisation) in between
    alpha_on_device = row_alpha.to(device)
    target = torch.full((1,), token, dtype=torch.long, device=device)
    enter = can_enter(get_adapter(model))
    residuals = None
    if enter:  # the cache holds the scored token too; the rows' mask hides it (they see their own key instead)
        cache, residuals = entry_prefix(model, ids[None, :scored + 1], positions[None, :scored + 1],
                                        torch.full((1,), scored, dtype=torch.long, device=device))
        visible = torch.arange(scored + 1, device=device) < scored
    else:
        cache = _prefix_cache(model, ids, positions, scored)
        if cache is None and scored > 0:
            return None
    boolean, dtype = attention_implementation(model) == "sdpa", next(model.parameters()).dtype
    slot_of = {layer: slot for slot, layer in enumerate(layers)}
    sums, start, total = None, 0, row_layer.numel()
    while start < total:
        rows, candidate = planner.next_chunk(total - start, scored, device, total)
        began = time.perf_counter()
        mask = None if enter else shared_prefix_mask(model, cache, scored, rows, device)
        if mask is None and not enter:
            return None
        plan, segments = chunk_layout(row_layer[start:start + rows], alpha_on_device, start, enter)

        def inputs_for(count: int, mask=mask) -> dict[str, Any]:
            return dict(input_ids=ids[scored].expand(1, count), position_ids=positions[scored].expand(1, count),
                        attention_mask=rows_mask(visible, count, boolean, dtype) if enter else mask,
                        use_cache=cache is not None)

        last = start + rows == total
        # what a first chunk keeps for the backward corrects the planner's memory model (a later chunk may enter
        # the decoder deeper and keep less)
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" and start == 0 else None

        def observe(rows: int = rows, before: int | None = before) -> None:
            if before is not None:
                planner.observe(rows, scored, torch.cuda.memory_allocated(device) - before)

        failed = False
        try:
            grads = chunk_grads(model, scaler, plan, segments, inputs_for,
                                cache if last or cache is None else copy.deepcopy(cache), residuals, target, observe)
        except Exception as error:  # noqa: BLE001 - only out-of-memory errors are handled, others re-raised
            if not is_out_of_memory(error):
                raise
            failed = True
        if failed:  # outside the except block, so that the traceback no longer holds the chunk's tensors
            free_memory()
            if rows == 1:
                raise NeuronscopeError("out of memory with one integrated-gradients row: use a smaller dtype, "
                                       "shorter prompts or spread the model over more GPUs (device_map)")
            planner.shrink(rows)
            continue
        sums = _add_chunk(sums, scaler, plan, grads, slot_of)
        if candidate is not None:  # a size being tried: time it (one synchronisation)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            planner.timed(candidate, rows, time.perf_counter() - began)
        start += rows
    activations, grad_sums = sums
    return (activations * grad_sums / alphas.numel()).cpu()


def _ig_plain(model: nn.Module, scaler: _RowScaler, ids: torch.Tensor, positions: torch.Tensor, scored: int,
              token: int, layers: list[int], alphas: torch.Tensor, batch_size: int) -> torch.Tensor:
    """NA ``[layers, d_ff]`` of one (example, target): per layer, ``m`` scaled full forwards (no cache)."""
    steps = alphas.numel()
    out = []
    for layer in layers:
        grad_sums: dict[int, torch.Tensor] = {}
        activations: dict[int, torch.Tensor] = {}
        for start in range(0, steps, batch_size):
            chunk_alpha = alphas[start:start + batch_size]
            rows = chunk_alpha.numel()
            scaler.start({layer: (torch.arange(rows), chunk_alpha)}, position=scored)
            try:
                with torch.enable_grad():
                    logits = model(input_ids=ids[None].expand(rows, -1),
                                   attention_mask=torch.ones(rows, ids.numel(), dtype=torch.long, device=ids.device),
                                   position_ids=positions[None].expand(rows, -1)).logits[:, scored]
                    _accumulate(scaler, target_probability(logits, token), grad_sums, activations)
            finally:
                scaler.stop()
        out.append(activations[layer] * grad_sums[layer] / steps)
    return torch.stack(out)
