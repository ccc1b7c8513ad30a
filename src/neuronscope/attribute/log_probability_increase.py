"""Log-probability increase (LPI) of Yu & Ananiadou (2024), "Neuron-Level Knowledge Attribution in Large Language
Models": how much a vector written into the residual stream raises the log-probability of the target token.

The final norm is frozen at the scale ``σ`` of the final residual (the last layer's output) at the scored position,
so that the readout is affine in the residual::

    bs(x) = W_U (g_f ⊙ C(x) / σ + b_f) + b_U          (then the model's logit soft-cap, if any)
    LPI(v | r) = log softmax(bs(r + v))[w] − log softmax(bs(r))[w]

``C`` centres (LayerNorm models) or is the identity (RMSNorm); ``b_f`` is the LayerNorm bias — kept here, the
reference code drops it; ``w`` is the target (default: the model's own prediction). The log-softmax is over the full
vocabulary (exact; chunked over neurons so that only a few ``chunk_size × V`` blocks of logits exist at a time), or
over a candidate set (``candidates=``: exact log-softmax over ``candidates ∪ targets``).

What ``v`` and ``r`` are:

- FFN neuron ``(l, i)``: ``v`` = the neuron's write into the residual, ``r`` = the residual that write lands on:
  site ``ffn_in`` (the input of the pre-FFN norm) for sequential blocks; for parallel-residual families (GPT-NeoX,
  GPT-J, Falcon, Phi, Cohere) the layer output minus the FFN's write, i.e. the layer input plus the attention
  output. The write is ``m · a_i w_i`` with ``m`` the family's residual multiplier (1 for most; Granite,
  Falcon-H1, MiniCPM3 read it from the model); families with a post-FFN norm (Gemma-2/3, OLMo-2, GLM-4) add
  ``post_norm(ffn_out)``, not ``Σ a_i w_i``: there the neuron's write is ``a_i w_i`` read through that norm frozen
  at ``ffn_out``'s own scale, ``m · g_p ⊙ a_i w_i / σ_p`` (the writes then sum to the FFN's real write exactly;
  see :class:`neuronscope.models.accounting.WriteMap`).
- Attention head ``(l, h)``: ``v`` = the head output written into the residual the same way (multiplier, frozen
  post-attention norm), ``r`` = the layer input.
- The readout includes the family's logit scale (Granite ``1 / logits_scaling``, Cohere ``logit_scale``, ...)
  and soft-cap; every scoring forward checks that the model's own logits are this readout of its last residual
  and refuses the model otherwise.
- Per source position / attention neuron of a head: ``v`` = the head's contribution from source ``s``
  (``A_h[t, s] · v_s W_O[slice_h]``) or one coordinate of it; ``r`` = the layer input
  (:func:`head_source_log_probability_increase`; this is what ranks image patches for the top head).

Biases of the output projections belong to no neuron or head and are not scored.

Example:
    >>> scores = log_probability_increase(model, batch, prediction_targets(model, batch), layers=[10])
    >>> scores.top_k(10)                              # (layer, neuron) rows, LPI values
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from neuronscope.attribute.frozen_readout import FrozenReadout
from neuronscope.attribute.frozen_readout import readout_for as _readout
from neuronscope.attribute.graphed_rows import Rows, graphed_rows
from neuronscope.attribute.heads import (
    HeadSourceScores,
    attention_probe,
    check_weighted_values,
    weighted_values,
)
from neuronscope.attribute.kernels import (
    accumulation_dtype,
    log_probability_increase_from_logits,
    shifted_logsumexp,
    target_log_probability,
    target_values,
)
from neuronscope.attribute.residual import ffn_residual, ffn_sites, scored_value_vectors, write_note
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet, prediction_targets
from neuronscope.models.adapter import ModelAdapter, get_adapter
from neuronscope.models.attention import head_output_rows, kv_head
from neuronscope.results.scores import NeuronScores
from neuronscope.trace import Capture, capture

DEFAULT_CHUNK = 1024


# -- model plumbing ----------------------------------------------------------------------------------------------
def _targets_or_prediction(model: nn.Module, batch: Batch, targets: TargetSet | None) -> TargetSet:
    return prediction_targets(model, batch) if targets is None else targets


def _run(model: nn.Module, adapter: ModelAdapter, batch: Batch, targets: TargetSet, sites: list[str],
         layers: list[int], device: torch.device, final_scale: torch.Tensor | None = None, defer: bool = False,
         graphs: bool = False) -> tuple[Capture | Rows, torch.Tensor]:
    """One forward capturing ``sites`` at the targets' positions; returns the capture and ``σ [B, n, 1]`` (this
    run's own, or ``final_scale`` when given: another run's, e.g. the original condition's in CNA). ``graphs``: the
    forward may replay from a CUDA graph (:func:`~neuronscope.attribute.graphed_rows.graphed_rows`)."""
    last = adapter.n_layers - 1
    positions = torch.where(targets.valid, targets.positions, torch.full_like(targets.positions, batch.seq_len - 1))
    requests = tuple(dict.fromkeys([(site, layer) for site in sites for layer in layers] + [("resid_post", last)]))
    columns = torch.arange(positions.shape[1]).expand_as(positions)  # rows.logits holds the positions' logits only
    acts = graphed_rows(model, adapter, batch, positions, requests, lambda rows: adapter.check_readout(
        rows.get("resid_post", last), rows.logits, columns)) if graphs else None  # eager calls: checked at once
    if acts is not None:
        final = acts.get("resid_post", last)
    else:
        with capture(model, sites=sites, layers=layers, positions=positions, to=device) as acts, \
                capture(model, sites="resid_post", layers=[last], positions=positions, to=device) as end:
            output = model(**batch.forward_inputs())  # no host wait: the queued products run meanwhile
        final = end.get("resid_post", last)
        adapter.check_readout(final, getattr(output, "logits", None), positions, defer=defer)
    if final_scale is None:
        return acts, adapter.final_norm().scale(final)
    if torch.as_tensor(final_scale).numel() != targets.token_ids.numel():
        raise NeuronscopeError(f"final_scale holds {torch.as_tensor(final_scale).numel()} values for "
                               f"{targets.token_ids.numel()} (example, target) pairs: give one σ per pair")
    return acts, torch.as_tensor(final_scale).to(final.dtype).reshape(*targets.token_ids.shape, 1).to(device)


def _rows(targets: TargetSet) -> Iterator[tuple[int, int]]:
    """(example, target) pairs that hold a real target."""
    yield from (tuple(pair) for pair in targets.valid.nonzero().tolist())


def _meta(method: str, adapter: ModelAdapter, targets: TargetSet, readout: FrozenReadout, **extra) -> dict:
    return {"method": method, "targets": targets.describe(), "model": adapter.describe(),
            "vocabulary": "full" if readout.token_ids is None else readout.token_ids.tolist(),
            "final_norm": "frozen at the final residual's scale",
            "compute_dtype": str(readout.dtype).removeprefix("torch."), **extra}


@torch.no_grad()
def log_probability_increase(
    model: nn.Module,
    batch: Batch,
    targets: TargetSet | None = None,
    *,
    layers: list[int] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    candidates: Sequence[int] | torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float32,
    final_scale: torch.Tensor | None = None,
    unit: str = "neuron",
    graphs: bool = True,
) -> NeuronScores:
    """Exact LPI of every FFN neuron of ``layers`` for each target.

    Args:
        model: a causal LM or a vision-language model.
        batch: left-padded inputs (:mod:`neuronscope.inputs`).
        targets: target tokens and their positions; default the model's own prediction at the last position.
        layers: layers to score; default all.
        chunk_size: neurons scored at once; peak extra memory is about ``3 × chunk_size × V`` float32 logits
            (default 1024: ~400 MB for V = 32k), plus on a GPU ``frozen_readout.QUEUE_BYTES`` issued early.
        candidates: token ids; if given the log-softmax is exact over ``candidates ∪ targets`` instead of the whole
            vocabulary.
        compute_dtype: dtype of the ``value vectors × unembedding`` products (float32 default; bfloat16 is faster
            and approximate). Log-sum-exps are always float32.
        unit: ``"neuron"`` (default) or ``"head"`` (same as :func:`head_log_probability_increase`).
        final_scale: ``[examples, targets]`` final-norm scales ``σ`` to freeze the readout at instead of this
            run's own (CNA scores a second condition at the original run's scale this way).
        graphs: on a GPU, run the forward from a CUDA graph of the call's shape once the shape comes back
            (:mod:`neuronscope.attribute.graphed_rows`: the batch padded on the right, the same scores up to
            rounding); False: every forward eager and unpadded.

    Returns:
        NeuronScores ``[examples, targets, layers, d_ff]`` (zeros where a row has fewer targets).

    Example:
        >>> scores = log_probability_increase(model, batch, layers=[-1], chunk_size=2048)
        >>> neurons, values = scores.top_k(5)
    """
    if unit == "head":
        return head_log_probability_increase(model, batch, targets, layers=layers, chunk_size=chunk_size,
                                             candidates=candidates, compute_dtype=compute_dtype,
                                             final_scale=final_scale, graphs=graphs)
    if unit != "neuron":
        raise NeuronscopeError(f"unit must be 'neuron' or 'head', not '{unit}'")
    if chunk_size < 1:
        raise NeuronscopeError(f"chunk_size must be at least 1, got {chunk_size}")
    adapter = get_adapter(model)
    if adapter.moe is not None:  # mixture-of-experts models: (layer, expert, index) neurons
        from neuronscope.attribute.moe_lpi import moe_log_probability_increase

        return moe_log_probability_increase(model, batch, targets, layers=layers, chunk_size=chunk_size,
                                            candidates=candidates, compute_dtype=compute_dtype,
                                            final_scale=final_scale)
    targets = _targets_or_prediction(model, batch, targets)
    targets.check(batch.seq_len, adapter.vocab_size)
    layer_list = adapter.resolve_layers(layers)
    readout = _readout(adapter, targets, candidates, compute_dtype)
    columns = readout.column(targets.token_ids)
    sites = list(dict.fromkeys(["neuron", "resid_post"] + ffn_sites(adapter)))
    scored = [layer for layer in layer_list if adapter.has_ffn(layer)] if layers is None else layer_list
    captured = [adapter.require_ffn(layer) for layer in scored]
    first = scored_value_vectors(adapter, scored[0]) if scored else None
    ahead = readout.queue(first, chunk_size) if scored else []  # GPU: the first products run during the forward
    acts, sigma = _run(model, adapter, batch, targets, sites, captured, readout.device, final_scale, defer=True,
                       graphs=graphs)

    scores = torch.zeros(*targets.token_ids.shape, len(layer_list), adapter.d_ff, device=readout.device)
    for layer in scored:
        slot = layer_list.index(layer)
        base = readout.logits(ffn_residual(adapter, acts, layer), sigma)  # [B, n, V']
        write = adapter.ffn_write(layer)
        coefficients = acts.get("neuron", layer).to(readout.offset.dtype) / sigma  # [B, n, d_ff]
        vectors = first if layer == scored[0] else scored_value_vectors(adapter, layer)  # [d_ff, d]
        if not write.identity:  # m · post_norm frozen at ffn_out's scale: m / σ_p per position, g_p per coordinate
            coefficients = coefficients * write.position_scale(acts.get("ffn_out", layer)).to(coefficients.dtype)
        pairs = [(row, col, int(columns[row, col])) for row, col in _rows(targets)]
        acc = accumulation_dtype(base, readout.rows)  # per chunk: products, log-sum-exps, target columns
        lse = torch.empty(len(pairs), adapter.d_ff, dtype=acc, device=readout.device)
        picked = torch.empty(len(pairs), adapter.d_ff, dtype=readout.dtype, device=readout.device)
        for start in range(0, adapter.d_ff, chunk_size):
            stop = min(start + chunk_size, adapter.d_ff)
            directions = ahead.pop(0) if ahead else readout.delta(vectors[start:stop])  # [c, V']
            for slot_p, (row, col, column) in enumerate(pairs):
                lse[slot_p, start:stop] = shifted_logsumexp(base[row, col], directions,
                                                            coefficients[row, col, start:stop], readout.softcap)
                picked[slot_p, start:stop] = directions[:, column]
        for slot_p, (row, col, column) in enumerate(pairs):  # log_probability_increase_from_logits, all neurons
            new_target = target_values(base[row, col, column:column + 1], picked[slot_p][:, None], 0,
                                       coefficients[row, col], readout.softcap)
            increase = (new_target - lse[slot_p]) - target_log_probability(base[row, col], column, readout.softcap)
            scores[row, col, slot] = increase if acc == torch.float64 else increase.float()
    meta = _meta("log_probability_increase", adapter, targets, readout, unit="neuron", site="neuron",
                 layers=layer_list, ffn_write=write_note(adapter.ffn_write(scored[0]) if scored else None))
    adapter.finish_checks()
    return NeuronScores(scores.cpu(), meta=meta)


@torch.no_grad()
def head_log_probability_increase(
    model: nn.Module,
    batch: Batch,
    targets: TargetSet | None = None,
    *,
    layers: list[int] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    candidates: Sequence[int] | torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float32,
    final_scale: torch.Tensor | None = None,
    graphs: bool = True,
) -> NeuronScores:
    """Exact LPI of every attention head's output, with ``r`` = the layer input.

    Args: as :func:`log_probability_increase` (``chunk_size`` counts value coordinates, ``heads × d_head``).

    Returns:
        NeuronScores ``[examples, targets, layers, heads]`` with ``meta["unit"] == "head"``; ``top_k`` gives
        (layer, head) rows.

    Example:
        >>> heads = head_log_probability_increase(model, batch)
        >>> (layer, head), = heads.top_k(1)[0].tolist()
    """
    adapter = get_adapter(model)
    targets = _targets_or_prediction(model, batch, targets)
    targets.check(batch.seq_len, adapter.vocab_size)
    layer_list = adapter.resolve_layers(layers)
    readout = _readout(adapter, targets, candidates, compute_dtype)
    columns = readout.column(targets.token_ids)
    scored = [layer for layer in layer_list if adapter.has_attention(layer)] if layers is None else layer_list
    scored = [adapter.require_attention(layer) for layer in scored]
    sites = ["attn", "resid_pre", "resid_post"] + (["attn_out"] if _attn_needs_out(adapter, scored) else [])
    acts, sigma = _run(model, adapter, batch, targets, sites, scored, readout.device, final_scale, graphs=graphs)

    n_heads = adapter.n_heads
    scores = torch.zeros(*targets.token_ids.shape, len(layer_list), n_heads, device=readout.device)
    for layer in scored:
        slot, head_dim = layer_list.index(layer), adapter.head_dim_of(layer)
        per_chunk = max(1, chunk_size // head_dim)
        base = readout.logits(acts.get("resid_pre", layer), sigma)
        coefficients = acts.get("attn", layer).to(readout.offset.dtype) / sigma  # [B, n, H * d_head]
        write = adapter.attn_write(layer)
        if not write.identity:
            coefficients = coefficients * write.position_scale(acts.get("attn_out", layer)).to(coefficients.dtype)
        rows = head_output_rows(adapter, layer)
        for first in range(0, n_heads, per_chunk):
            last = min(first + per_chunk, n_heads)
            directions = readout.delta(rows[first * head_dim:last * head_dim])  # [k * d_head, V']
            directions = directions.view(last - first, head_dim, -1)
            for row, col in _rows(targets):
                weights = coefficients[row, col, first * head_dim:last * head_dim].view(last - first, head_dim)
                delta = torch.einsum("hk,hkv->hv", weights.to(directions.dtype), directions)
                scores[row, col, slot, first:last] = log_probability_increase_from_logits(
                    base[row, col], delta, int(columns[row, col]), readout.softcap)
    meta = _meta("log_probability_increase", adapter, targets, readout, unit="head", site="attn",
                 layers=layer_list, attn_write=write_note(adapter.attn_write(scored[0]) if scored else None))
    return NeuronScores(scores.cpu(), meta=meta)


def _attn_needs_out(adapter: ModelAdapter, layers: list[int]) -> bool:
    return any(not adapter.attn_write(layer).identity for layer in layers)


def _sources(sources: torch.Tensor | Sequence[int] | None, batch: Batch) -> torch.Tensor:
    if sources is None:
        return torch.arange(batch.seq_len)[None].expand(len(batch), -1)
    sources = torch.as_tensor(sources, dtype=torch.long)
    sources = sources[None].expand(len(batch), -1) if sources.dim() == 1 else sources
    if sources.shape[0] != len(batch) or int(sources.min()) < 0 or int(sources.max()) >= batch.seq_len:
        raise NeuronscopeError(
            f"sources must be positions in [0, {batch.seq_len}) given once [S] or per row [{len(batch)}, S], got "
            f"shape {tuple(sources.shape)}"
        )
    return sources


@torch.no_grad()
def head_source_log_probability_increase(
    model: nn.Module,
    batch: Batch,
    targets: TargetSet | None = None,
    *,
    heads: torch.Tensor | Sequence[tuple[int, int]],
    sources: torch.Tensor | Sequence[int] | None = None,
    coordinates: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    candidates: Sequence[int] | torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float32,
    final_scale: torch.Tensor | None = None,
) -> HeadSourceScores:
    """LPI of chosen heads' contributions from each source position (or of each attention neuron).

    For head ``h`` of layer ``l``, scored position ``t`` and source ``s``: ``v = A_h[t, s] · v_s W_O[slice_h]``
    (``coordinates=False``), or the attention neuron ``v = A_h[t, s] · v_s[n] · W_O[slice_h][n]`` for each value
    coordinate ``n`` (``coordinates=True``); ``r`` = the layer input at ``t``. Padding sources get 0.

    Args:
        heads: ``[k, 2]`` (layer, head) rows, e.g. the top heads of :func:`head_log_probability_increase`.
        sources: source positions ``[S]`` or ``[examples, S]`` (e.g. the image-token positions); default all.
        coordinates: score each value coordinate separately (attention neurons).
        chunk_size: vectors scored at once (peak extra memory about ``3 × chunk_size × V`` float32 logits).
        Others: as :func:`log_probability_increase`.

    Returns:
        :class:`HeadSourceScores` ``[examples, targets, k, S]`` (or ``[..., S, d_head]``).

    Example:
        >>> top = head_log_probability_increase(model, batch).top_k(1)[0]
        >>> patches = head_source_log_probability_increase(model, batch, heads=top, sources=image_positions)
        >>> patches.normalised()[0, 0, 0]          # [S] in [0, 1], ready for the vision grid
    """
    adapter = get_adapter(model)
    targets = _targets_or_prediction(model, batch, targets)
    targets.check(batch.seq_len, adapter.vocab_size)
    head_rows = torch.as_tensor(heads, dtype=torch.long).reshape(-1, 2)
    head_rows = torch.stack([torch.tensor([adapter.check_layer(int(layer)), int(head)]) for layer, head in head_rows])
    for head in head_rows[:, 1].tolist():
        adapter.head_slice(head)  # range check
    layer_list = sorted(set(head_rows[:, 0].tolist()))
    source_positions = _sources(sources, batch)
    readout = _readout(adapter, targets, candidates, compute_dtype)
    columns = readout.column(targets.token_ids)
    for layer in layer_list:
        adapter.require_attention(layer)
    sites = ["attn", "resid_pre", "resid_post"] + (["attn_out"] if _attn_needs_out(adapter, layer_list) else [])
    positions = torch.where(targets.valid, targets.positions, torch.full_like(targets.positions, batch.seq_len - 1))
    with attention_probe(model, layer_list, adapter) as probe:
        acts, sigma = _run(model, adapter, batch, targets, sites, layer_list, readout.device, final_scale)

    widths = {adapter.head_dim_of(layer) for layer in layer_list}
    if coordinates and len(widths) != 1:
        raise NeuronscopeError(f"the chosen heads have different widths {sorted(widths)}: score attention neurons "
                               "of one layer width at a time")
    shape = (*targets.token_ids.shape, len(head_rows), source_positions.shape[1])
    scores = torch.zeros(*shape, max(widths)) if coordinates else torch.zeros(shape)
    for slot, (layer, head) in enumerate(head_rows.tolist()):
        weighted = weighted_values(probe.weights[layer], probe.values[layer], positions, torch.tensor([head]),
                                   torch.tensor([kv_head(adapter, head, layer)]))[:, :, 0]  # [B, n, T, d_head]
        head_site = acts.get("attn", layer)[..., adapter.head_slice(head, layer)]
        check_weighted_values(weighted[:, :, None], head_site[:, :, None], f"layer {layer}, head {head}")
        weighted = weighted.to(readout.device) / sigma[..., None]
        write = adapter.attn_write(layer)
        if not write.identity:
            weighted = weighted * write.position_scale(acts.get("attn_out", layer)).float()[..., None]
        base = readout.logits(acts.get("resid_pre", layer).float(), sigma)
        directions = readout.delta(head_output_rows(adapter, layer)[adapter.head_slice(head, layer)])  # [d_head, V']
        for row, col in _rows(targets):
            alpha = weighted[row, col, source_positions[row].to(weighted.device)]  # [S, d_head]
            scores[row, col, slot] = _source_scores(alpha, directions, base[row, col], int(columns[row, col]),
                                                    readout.softcap, coordinates, chunk_size)
    meta = _meta("log_probability_increase", adapter, targets, readout,
                 unit="attention_neuron" if coordinates else "head_source", heads=head_rows.tolist(),
                 attn_write=write_note(adapter.attn_write(layer_list[0])))
    return HeadSourceScores(scores, head_rows, source_positions.clone(), meta)


def _source_scores(alpha: torch.Tensor, directions: torch.Tensor, base: torch.Tensor, column: int,
                   softcap: float | None, coordinates: bool, chunk_size: int) -> torch.Tensor:
    """LPIs of ``alpha [S, d_head] ⊗ directions [d_head, V']``: per source ``[S]`` (summed over coordinates) or
    per (source, coordinate) ``[S, d_head]``."""
    n_sources, head_dim = alpha.shape
    alpha = alpha.to(directions.dtype)
    if not coordinates:
        out = [log_probability_increase_from_logits(base, alpha[start:start + chunk_size] @ directions, column,
                                                    softcap).cpu() for start in range(0, n_sources, chunk_size)]
        return torch.cat(out)
    step = max(1, chunk_size // head_dim)
    out = []
    for start in range(0, n_sources, step):
        delta = (alpha[start:start + step, :, None] * directions[None]).flatten(0, 1)  # [s * d_head, V']
        out.append(log_probability_increase_from_logits(base, delta, column, softcap).view(-1, head_dim).cpu())
    return torch.cat(out)
