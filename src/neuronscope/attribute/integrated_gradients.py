"""Knowledge-neuron integrated gradients (Dai et al. 2022; NA of Chen, Dejl & Toni 2024):

``NA(l, i) = a_i · (1/m) Σ_k ∂P(y | a_l ← α_k·a_l) / ∂a_i``

IG at ONE layer ``l`` and ONE position (each target's position, usually the last): the whole neuron vector
``a_l`` at that position is scaled by ``α_k`` from a zero baseline, the other layers and positions are untouched,
and ``P`` is the softmax probability (not the log) of the target token at that position. The gradient is the
gradient of ``P`` with respect to the scaled site (as in Captum's ``IntegratedGradients``).

Grids (``m = steps``, default 20):
- ``"dai"``: ``α_k = k/m, k = 1..m`` (Dai et al.; Captum's ``"riemann_right"``);
- ``"linspace"``: ``α = linspace(0, 1, m)``, both ends, uniform weights ``1/m`` (EleutherAI knowledge-neurons
  and qrneuron). Completeness holds up to the Riemann error: ``Σ_i NA(l, i) ≈ P(y) − P(y | a_l = 0)``.

Sites: ``"neuron"`` (default, the FFN output projection's input), ``"act"`` and ``"up"`` (gated FFNs). Scaling
``act`` (or ``up``) by α scales ``neuron = act ⊙ up`` by the same α, and ``act_i ∂P/∂act_i = neuron_i ∂P/∂neuron_i``,
so the three sites give the same scores (up to rounding); ``gate`` / ``pre`` sit before a non-linearity, where
a zero baseline means something else, and are refused.

Three paths compute the same numbers:
- ``method="sequence"`` (default): per (example, target) the prefix (positions before the scored one) runs once
  with a KV cache; then all ``layers × steps`` rows ``r = (layer l_r, step k_r)`` run as ``R`` query tokens of ONE
  sequence (all copies of the scored token at its position id) under a 4-D mask that lets each see the shared
  prefix cache and itself only (:mod:`neuronscope.attribute.prefix_rows`); token ``r`` scales layer ``l_r``'s site
  by ``α_{k_r}``, and one backward serves all rows. Memory grows with the rows, not rows × prefix; rows per
  forward: the fastest measured size that fits in the free memory (:class:`~.prefix_rows.RowPlanner`). Models
  whose attention cannot take a 4-D mask (flash / flex) use ``"packed"`` instead (``meta["path"]`` says which
  ran).
- ``method="packed"``: the same rows as separate batch rows, each with its own copy of the prefix cache.
- ``method="plain"``: per (example, target, layer) the full example sequence is run as ``m`` rows (chunked by
  ``batch_size``), without a cache; the slow reference.

In every path the scaled site is a fresh autograd leaf, so the backward never goes below the scored layer
(``torch.autograd.grad`` on those leaves only). Causality makes the prefix reuse exact.

Text models only: vision-language inputs (``pixel_values`` ...) raise an error.

Example:
    >>> targets = word_targets(tokenizer, batch, "Paris")
    >>> scores = integrated_gradients(model, batch, targets, steps=20)   # [examples, 1, layers, d_ff]
    >>> scores.top_k(10)
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuronscope.attribute.prefix_rows import RowPlanner, cache_keyword, planner_for, shared_prefix_mask
from neuronscope.errors import NeuronscopeError, PositionError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models.adapter import ModelAdapter, get_adapter
from neuronscope.results.scores import NeuronScores
from neuronscope.runs.batching import AdaptiveBatcher, free_memory, is_out_of_memory
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.positions import CallState
from neuronscope.trace.sites import resolve_site

IG_SITES = ("neuron", "act", "up")
GRIDS = ("dai", "linspace")
METHODS = ("sequence", "packed", "plain")
_TEXT_KEYS = ("input_ids", "attention_mask", "position_ids")


def alpha_grid(steps: int, grid: str = "dai") -> torch.Tensor:
    """The scaling factors ``α [steps]`` (float64) of an IG grid; the NA weights are ``1/steps`` for each.

    Example:
        >>> alpha_grid(4).tolist(), alpha_grid(3, "linspace").tolist()
        ([0.25, 0.5, 0.75, 1.0], [0.0, 0.5, 1.0])
    """
    if not isinstance(steps, int) or steps < 1:
        raise NeuronscopeError(f"integrated gradients needs steps >= 1 (got {steps!r}); the papers use 20")
    if grid == "dai":
        return torch.arange(1, steps + 1, dtype=torch.float64) / steps
    if grid == "linspace":
        return torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    raise NeuronscopeError(f"unknown IG grid '{grid}': use 'dai' (k/m, k=1..m) or 'linspace' (linspace(0, 1, m))")


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


def _target_probability(logits: torch.Tensor, token: int) -> torch.Tensor:
    """``P(token)`` of each row of ``logits [rows, vocab]`` in at least float32."""
    return logits.to(_work_dtype(logits.dtype)).softmax(-1)[:, token]


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
    with torch.no_grad():
        out = model(input_ids=ids[None, :scored], attention_mask=torch.ones_like(ids[None, :scored]),
                    position_ids=positions[None, :scored], use_cache=True)
    found = getattr(out, "cache", None)  # transformers >= 5.24; "past_key_values" before
    return found if found is not None else getattr(out, "past_key_values", None)


def _layer_major_rows(layers: list[int], alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``(l0, k0..), (l1, k0..), ...``: their layer and α, ``[layers · steps]`` each."""
    return torch.tensor(layers).repeat_interleave(alphas.numel()), alphas.repeat(len(layers))


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
                probability = _target_probability(logits, token)
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
    token of a single sequence that sees the shared cache and itself only. None: the model cannot take the mask."""
    device = ids.device
    row_layer, row_alpha = _layer_major_rows(layers, alphas)
    # on the device before any forward is queued: no host-to-device copy (a stream synchronisation) in between
    alpha_on_device = row_alpha.to(device)
    cache = _prefix_cache(model, ids, positions, scored)
    if cache is None and scored > 0:
        return None
    slot_of = {layer: slot for slot, layer in enumerate(layers)}
    grad_sums = activations = None
    keyword, start = cache_keyword(model), 0
    while start < row_layer.numel():
        rows, candidate = planner.next_chunk(row_layer.numel() - start, scored, device, row_layer.numel())
        began = time.perf_counter()
        mask = shared_prefix_mask(model, cache, scored, rows, device)
        if mask is None:
            return None
        chunk_layer = row_layer[start:start + rows]
        plan = {}
        for layer in dict.fromkeys(chunk_layer.tolist()):  # layer-major: each layer's rows are one range
            where = (chunk_layer == layer).nonzero()[:, 0]
            first, last = int(where[0]), int(where[-1]) + 1
            plan[layer] = (torch.arange(first, last, device=device), alpha_on_device[start + first:start + last])
        kwargs: dict[str, Any] = dict(input_ids=ids[scored].expand(1, rows), attention_mask=mask,
                                      position_ids=positions[scored].expand(1, rows))
        if cache is not None:
            kwargs.update({keyword: copy.deepcopy(cache), "use_cache": True})
        else:
            kwargs["use_cache"] = False
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
        scaler.start(plan, tokens=True)
        failed = False
        try:
            with torch.enable_grad():
                probability = _target_probability(model(**kwargs).logits[0], token)
                if before is not None:  # what the rows keep for the backward (the planner's model is corrected)
                    planner.observe(rows, scored, torch.cuda.memory_allocated(device) - before)
                leaves = [scaler.leaves[layer] for layer in plan]
                grads = torch.autograd.grad(probability.sum(), leaves)
        except Exception as error:  # noqa: BLE001 - only out-of-memory errors are handled, others re-raised
            if not is_out_of_memory(error):
                raise
            failed = True
        finally:
            scaler.stop()
        if failed:  # outside the except block, so that the traceback no longer holds the chunk's tensors
            del kwargs
            free_memory()
            if rows == 1:
                raise NeuronscopeError("out of memory with one integrated-gradients row: use a smaller dtype, "
                                       "shorter prompts or spread the model over more GPUs (device_map)")
            planner.shrink(rows)
            continue
        if grad_sums is None:
            work = _work_dtype(grads[0].dtype)
            grad_sums = torch.zeros(len(layers), grads[0].shape[-1], dtype=work, device=device)
            activations = torch.zeros_like(grad_sums)
        for layer, grad in zip(plan, grads, strict=True):
            grad_sums[slot_of[layer]] += grad.to(grad_sums.dtype).sum(0)
            activations[slot_of[layer]] = scaler.activations[layer][0].to(grad_sums.dtype)
        if candidate is not None:  # a size being tried: time it (one synchronisation)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            planner.timed(candidate, rows, time.perf_counter() - began)
        start += rows
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
                    _accumulate(scaler, _target_probability(logits, token), grad_sums, activations)
            finally:
                scaler.stop()
        out.append(activations[layer] * grad_sums[layer] / steps)
    return torch.stack(out)


def integrated_gradients(
    model: nn.Module,
    batch: Batch,
    targets: TargetSet,
    *,
    steps: int = 20,
    grid: str = "dai",
    site: str = "neuron",
    layers: list[int] | None = None,
    batch_size: int | None = None,
    method: str = "sequence",
    memory_budget: float | None = None,
) -> NeuronScores:
    """Knowledge-neuron integrated gradients of every neuron of the chosen layers, for each target.

    Args:
        model: a causal language model (text inputs).
        batch: left-padded inputs (:mod:`neuronscope.inputs`); padding is stripped per example.
        targets: target tokens and the positions whose probabilities they are (:mod:`neuronscope.inputs.targets`).
        steps: ``m``, the number of IG steps (default 20).
        grid: ``"dai"`` (``α_k = k/m``, default) or ``"linspace"`` (``linspace(0, 1, m)``); see module docstring.
        site: ``"neuron"`` (default), ``"act"`` or ``"up"``; all three give the same scores (module docstring).
        layers: layers to score; default all. Each layer is attributed separately (other layers untouched).
        batch_size: the most rows per forward: (layer, step) rows for ``"sequence"`` and ``"packed"``, steps for
            ``"plain"``. Default for ``"sequence"``: the fastest measured size that fits in the free memory
            (:class:`~neuronscope.attribute.prefix_rows.RowPlanner`: the largest size that fits, its half and its
            quarter are each tried once on real rows and timed, then the fastest is used in balanced chunks; kept
            per model across calls; halved on out-of-memory); for ``"packed"`` all ``layers × steps`` rows on a GPU,
            64 on a CPU; for ``"plain"`` 64.
        method: ``"sequence"`` (default: prefix once, all rows as query tokens of one sequence under a 4-D mask,
            one backward), ``"packed"`` (rows as batch rows, each with a copy of the prefix cache) or ``"plain"``
            (the reference: one layer at a time, full sequence, no cache). All give the same scores.
        memory_budget: bytes one ``"sequence"`` chunk may use (default: 90 % of the free device memory; 4 GiB on
            a CPU).

    Returns:
        NeuronScores ``[examples, targets, layers, d_ff]`` (float32, float64 for float64 models; zeros where a
        row has fewer targets).

    Example:
        >>> targets = token_targets(batch, [5, 9])
        >>> scores = integrated_gradients(model, batch, targets, steps=20, grid="linspace")
        >>> scores.values.shape                     # [2, 1, n_layers, d_ff]
    """
    alphas = alpha_grid(steps, grid)
    if site not in IG_SITES:
        raise NeuronscopeError(
            f"integrated_gradients is defined at sites {', '.join(IG_SITES)} (they give the same scores), "
            f"not '{site}'"
        )
    if method not in METHODS:
        raise NeuronscopeError(
            f"unknown integrated_gradients method '{method}': use {', '.join(map(repr, METHODS))}"
        )
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise NeuronscopeError(f"batch_size must be a positive number of rows, got {batch_size!r}")
    planner = planner_for(model, limit=batch_size, budget=memory_budget)
    if get_adapter(model).moe is not None:  # mixture-of-experts models: (layer, expert, index) neurons, packed by steps
        if site != "neuron":
            raise NeuronscopeError(f"integrated gradients of expert neurons is at the 'neuron' site, not '{site}'")
        from neuronscope.attribute.moe_gradients import moe_integrated_gradients

        return moe_integrated_gradients(model, batch, targets, steps=steps, grid=grid, layers=layers,
                                        batch_size=batch_size, method="plain" if method == "plain" else "packed")
    if batch_size is None:
        on_gpu = next(model.parameters()).device.type == "cuda"
        batch_size = max(1, len(layers or []) or get_adapter(model).n_layers) * steps if on_gpu else 64
    _check_text_inputs(batch)
    adapter: ModelAdapter = get_adapter(model)
    layer_list = adapter.resolve_layers(layers)
    targets.check(batch.seq_len, adapter.vocab_size)
    used = set()
    dtype = _work_dtype(next(model.parameters()).dtype)
    scores = torch.zeros(len(batch), targets.n_targets, len(layer_list), adapter.d_ff, dtype=dtype)
    scaler = _RowScaler()
    with HookSet(adapter) as hooks:
        for layer in layer_list:
            hooks.add(resolve_site(adapter, site, layer), scaler.callback(layer))
        embed_device = model.get_input_embeddings().weight.device
        for row, column in targets.valid.nonzero().tolist():
            ids, positions, scored = _example(batch, row, int(targets.positions[row, column]))
            args = (model, scaler, ids.to(embed_device), positions.to(embed_device), scored,
                    int(targets.token_ids[row, column]), layer_list, alphas)
            found = _ig_sequence(*args, planner) if method == "sequence" else None
            if found is None:  # "packed" / "plain" asked, or attention that cannot take a 4-D mask
                ran = "plain" if method == "plain" else "packed"
                found = (_ig_plain if ran == "plain" else _ig_packed)(*args, batch_size)
            else:
                ran = "sequence"
            used.add(ran)
            scores[row, column] = found
    meta = {"method": "integrated_gradients", "site": site, "layers": layer_list, "steps": steps, "grid": grid,
            "path": "+".join(sorted(used)) or method, "targets": targets.describe(), "model": adapter.describe()}
    return NeuronScores(scores, meta=meta)
