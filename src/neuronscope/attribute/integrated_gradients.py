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
  forward: the fastest measured size that fits in the memory budget (:class:`~.prefix_rows.RowPlanner`). Models
  whose attention cannot take a 4-D mask (flash / flex) use ``"packed"`` instead (``meta["path"]`` says which
  ran). On a GPU, a call whose shape came before is replayed from a CUDA graph (:mod:`.ig_graphs`): the host no
  longer issues its thousands of kernels one by one.
- ``method="packed"``: the same rows as separate batch rows, each with its own copy of the prefix cache.
- ``method="plain"``: per (example, target, layer) the full example sequence is run as ``m`` rows (chunked by
  ``batch_size``), without a cache; the slow reference.

In every path the scaled site is a fresh autograd leaf, so the backward never goes below the scored layer
(``torch.autograd.grad`` on those leaves only). Causality makes the prefix reuse exact.

Hybrid decoders (Mamba, short-convolution or linear-attention mixers: ``adapter.mixers``) always take ``"plain"``:
their mixers would mix the rows of one sequence, and their recurrent caches cannot be shared or copied over rows.
ALiBi decoders (``adapter.position_bias``: BLOOM, MPT, Falcon with ``alibi``) take ``"packed"`` for
``"sequence"``: their bias would see the rows of one sequence at other positions.

Text models only: vision-language inputs (``pixel_values`` ...) raise an error.

Example:
    >>> targets = word_targets(tokenizer, batch, "Paris")
    >>> scores = integrated_gradients(model, batch, targets, steps=20)   # [examples, 1, layers, d_ff]
    >>> scores.top_k(10)
"""

from __future__ import annotations

import torch
from torch import nn

from neuronscope.attribute.ig_graphs import graphed_sequence
from neuronscope.attribute.ig_paths import (
    _check_text_inputs,
    _example,
    _ig_packed,
    _ig_plain,
    _ig_sequence,
    _RowScaler,
    _work_dtype,
)
from neuronscope.attribute.prefix_rows import planner_for
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models.adapter import ModelAdapter, get_adapter
from neuronscope.results.scores import NeuronScores
from neuronscope.trace.hooks import HookSet
from neuronscope.trace.sites import resolve_site

IG_SITES = ("neuron", "act", "up")
GRIDS = ("dai", "linspace")
METHODS = ("sequence", "packed", "plain")


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
    graphs: bool = True,
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
            ``"plain"``. Default for ``"sequence"``: the fastest measured size that fits in ``memory_budget``
            (:class:`~neuronscope.attribute.prefix_rows.RowPlanner`: the largest size that fits, its half and its
            quarter are each tried once on real rows and timed, then the fastest is used in balanced chunks; kept
            per model across calls; halved on out-of-memory); for ``"packed"`` all ``layers × steps`` rows on a GPU,
            64 on a CPU; for ``"plain"`` 64.
        method: ``"sequence"`` (default: prefix once, all rows as query tokens of one sequence under a 4-D mask,
            one backward), ``"packed"`` (rows as batch rows, each with a copy of the prefix cache) or ``"plain"``
            (the reference: one layer at a time, full sequence, no cache). All give the same scores.
        memory_budget: bytes one ``"sequence"`` chunk may use (default on a GPU: 90 % of the free memory, capped
            at 30 % of the weights' bytes or 2 GiB if that is more, so that the peak stays within ~1.3× the
            weights; 4 GiB on a CPU). More rows a chunk are faster only without CUDA graphs.
        graphs: on a CUDA device, replay a ``"sequence"`` call whose shape came before from a CUDA graph (captured
            on the shape's second call; prompts are padded to buckets of 32 positions so that similar lengths share
            one: :mod:`neuronscope.attribute.ig_graphs`); False: every call runs eagerly. Same scores either way (up
            to float rounding).

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
    mixed = any(mixer != "attention" for mixer in adapter.mixers)  # hybrids: Mamba, short convolutions, ...
    with HookSet(adapter, graph_safe=True, owned=True) as hooks:  # the scaling: the same at every call of a shape
        for layer in layer_list:
            hooks.add(resolve_site(adapter, site, layer), scaler.callback(layer))
        embed_device = model.get_input_embeddings().weight.device
        for row, column in targets.valid.nonzero().tolist():
            ids, positions, scored = _example(batch, row, int(targets.positions[row, column]))
            args = (model, scaler, ids.to(embed_device), positions.to(embed_device), scored,
                    int(targets.token_ids[row, column]), layer_list, alphas)
            # hybrids' non-attention token mixers would mix the rows (sequence) or their caches (packed)
            if mixed or method == "plain":
                ran, found = "plain", _ig_plain(*args, batch_size)
            else:
                ran, found = "sequence", None
                if method == "sequence":  # a replay of this shape's CUDA graph, else the eager call
                    found = graphed_sequence(*args, planner, site) if graphs else None
                    found = _ig_sequence(*args, planner) if found is None else found
                if found is None:  # "packed" asked, or attention that cannot take a 4-D mask
                    ran, found = "packed", _ig_packed(*args, batch_size)
            used.add(ran)
            scores[row, column] = found
    meta = {"method": "integrated_gradients", "site": site, "layers": layer_list, "steps": steps, "grid": grid,
            "path": "+".join(sorted(used)) or method, "targets": targets.describe(), "model": adapter.describe()}
    return NeuronScores(scores, meta=meta)
