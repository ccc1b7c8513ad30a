"""Comparative neuron analysis (CNA) and query neurons, from Yu & Ananiadou (2024).

**CNA**: the same score of the same neurons (or heads) under two conditions, and ``difference = B − A``:

- two prompts: ``batch`` vs ``batch_b`` (e.g. "A man works as a" vs "A woman works as a"), the same target token;
- the model vs an intervened copy: ``interventions_b`` applied while scoring B (a head ablated with
  :func:`neuronscope.trace.ablate_heads`, neurons zeroed with :func:`neuronscope.trace.suppress`);
- two models of the same architecture: ``model`` vs ``model_b`` (before / after fine-tuning).

The base score is LPI (:mod:`neuronscope.attribute.log_probability_increase`) unless another registered method is
named. The target token is the same in both conditions: by default condition A's own prediction. LPI freezes the
final norm at a scale ``σ``: by default (``final_norm="original"``, as the reference code) both conditions are
read at condition A's ``σ`` — the same readout, so a difference is a difference of what the neurons write, not of
how the final residual's norm moved; ``final_norm="own"`` reads each condition at its own ``σ`` (each LPI then is
exactly that run's own LPI, e.g. for comparing two models whose final residuals differ a lot in size).

**Query neurons** (DESIGN §3.3): an attention *value* neuron ``(l, h, n)`` reads the residual ``x_s`` at a source
position through the input norm; with key ``κ = C(W_V[kv(h) · d_head + n] ⊙ g_in)`` its value is
``⟨x_s, κ⟩ / σ_s`` (+ bias terms), so an earlier FFN neuron ``j`` supplies the fraction ``⟨a_j w_j, κ⟩ / ⟨x_s, κ⟩``
of it; its query score is that fraction times the value neuron's LPI. (``C`` centres for LayerNorm models; the bias
terms of the norm and of ``W_V`` belong to no neuron. Post-FFN-norm families: ``w_j`` is read through the frozen
post norm as in LPI.)

Example:
    >>> cna = comparative(model, encode_prompts(tok, ["A man works as a"]),
    ...                   batch_b=encode_prompts(tok, ["A woman works as a"]), layers=[20])
    >>> cna.top_k(10)                      # neurons whose LPI grows most from A to B
    >>> cna.condition_a.values, cna.condition_b.values
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from neuronscope.attribute.log_probability_increase import head_source_log_probability_increase
from neuronscope.attribute.registry import get_method
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet, prediction_targets
from neuronscope.models.adapter import ModelAdapter, get_adapter
from neuronscope.models.attention import attention_input_norm, kv_head, post_ffn_norm, value_weight
from neuronscope.results.scores import NeuronScores
from neuronscope.trace import Intervention, capture, intervene


# -- CNA -----------------------------------------------------------------------------------------------------------
@dataclass
class ComparativeScores(NeuronScores):
    """``values`` = condition B − condition A (so ``top_k`` / ``save`` work as for any scores), with both
    conditions kept in ``condition_a`` and ``condition_b``. ``save(path)`` also writes ``<path>_a`` and
    ``<path>_b``."""

    format: ClassVar[str] = "neuronscope.comparative_scores"
    also_reads: ClassVar[tuple[str, ...]] = ("neuronscope.neuron_scores",)  # saved before it had its own format

    condition_a: NeuronScores | None = None
    condition_b: NeuronScores | None = None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        for suffix, scores in (("_a", self.condition_a), ("_b", self.condition_b)):
            if scores is not None:
                scores.save(path.with_name(path.stem + suffix))
        return super().save(path)

    @classmethod
    def load(cls, path: str | Path) -> ComparativeScores:
        path = Path(path)
        difference = super().load(path)
        conditions = [NeuronScores.load(path.with_name(path.stem + suffix)) for suffix in ("_a", "_b")]
        return cls(difference.values, difference.indices, difference.shape, difference.meta, *conditions)


def shift_targets(targets: TargetSet, seq_len_a: int, seq_len_b: int) -> TargetSet:
    """The same target tokens at the same distance from the end of a batch of another length (left padding)."""
    offset = seq_len_b - seq_len_a
    return TargetSet(targets.token_ids.clone(), targets.positions + offset, targets.valid.clone(),
                     [list(row) for row in targets.labels])


def _score_function(method: str | Callable[..., NeuronScores]) -> tuple[str, Callable[..., NeuronScores]]:
    if callable(method):
        return getattr(method, "__name__", "custom"), method
    if method == "comparative":
        raise NeuronscopeError("the base score of CNA cannot be 'comparative' itself: name a scoring method")
    return method, get_method(method).function


def _check_same_architecture(a: ModelAdapter, b: ModelAdapter) -> None:
    keys = ("n_layers", "d_model", "d_ff", "n_heads", "head_dim", "vocab_size")
    first, second = a.describe(), b.describe()
    differ = [key for key in keys if first[key] != second[key]]
    if differ:
        detail = ", ".join(f"{key} {first[key]} vs {second[key]}" for key in differ)
        raise NeuronscopeError(f"CNA compares the same neurons, but the two models differ in {detail}: "
                               "use two models of one architecture (e.g. before / after fine-tuning)")


def _score(model: nn.Module, batch: Batch, targets: TargetSet, interventions: Sequence[Intervention],
           function: Callable[..., NeuronScores], options: dict[str, Any]) -> NeuronScores:
    with intervene(model, list(interventions)):
        return function(model, batch, targets, **options)


@torch.no_grad()
def final_norm_scale(model: nn.Module, batch: Batch, targets: TargetSet,
                     interventions: Sequence[Intervention] = ()) -> torch.Tensor:
    """``σ [examples, targets, 1]``: the final norm's scale of the last layer's output at each target's position,
    under ``interventions`` — the scale LPI freezes the readout at (pass it as ``final_scale=``).

    Example:
        >>> sigma = final_norm_scale(model, batch, prediction_targets(model, batch))
    """
    adapter = get_adapter(model)
    last = adapter.n_layers - 1
    positions = torch.where(targets.valid, targets.positions, torch.full_like(targets.positions, batch.seq_len - 1))
    with intervene(model, list(interventions)), \
            capture(model, sites="resid_post", layers=[last], positions=positions, to="cpu") as acts:
        model(**batch.inputs)
    return adapter.final_norm().scale(acts.get("resid_post", last)).float()


def _takes_final_scale(function: Callable[..., Any]) -> bool:
    try:
        return "final_scale" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def comparative(
    model: nn.Module,
    batch: Batch,
    targets: TargetSet | None = None,
    *,
    batch_b: Batch | None = None,
    targets_b: TargetSet | None = None,
    model_b: nn.Module | None = None,
    interventions_a: Sequence[Intervention] = (),
    interventions_b: Sequence[Intervention] = (),
    method: str | Callable[..., NeuronScores] = "log_probability_increase",
    final_norm: str = "original",
    **options: Any,
) -> ComparativeScores:
    """Score neurons (or heads) under two conditions and return both with their difference ``B − A``.

    Args:
        model, batch, targets: condition A; ``targets`` default: A's own prediction at the last position.
        batch_b: the prompts of condition B (default: ``batch``), one per row of ``batch``.
        targets_b: B's targets; default the same tokens at the same distance from the end of ``batch_b``.
        model_b: the model of condition B (default: ``model``); same architecture.
        interventions_a, interventions_b: interventions active while scoring each condition, e.g.
            ``ablate_heads(model, [(12, 5)])`` or ``suppress(neurons, positions="all")``.
        method: the base score: a registered method name (default ``"log_probability_increase"``) or a callable
            with the method signature.
        final_norm: for a base score that freezes the final norm (LPI): ``"original"`` (default, the reference
            code's choice) reads both conditions at condition A's scale ``σ``; ``"own"`` reads each at its own.
        **options: passed to the base score (``layers=``, ``chunk_size=``, ``unit="head"``, ...).

    Returns:
        :class:`ComparativeScores`: ``values`` = B − A, plus ``condition_a`` and ``condition_b``.

    Example:
        >>> ablated = ablate_heads(model, [(1, 0)])
        >>> cna = comparative(model, batch, interventions_b=ablated, unit="head")
        >>> cna.values[..., 1, 0] == -cna.condition_a.values[..., 1, 0]    # the ablated head lost its LPI
    """
    name, function = _score_function(method)
    model_b = model if model_b is None else model_b
    if model_b is not model:
        _check_same_architecture(get_adapter(model), get_adapter(model_b))
    batch_b = batch if batch_b is None else batch_b
    if len(batch_b) != len(batch):
        raise NeuronscopeError(f"condition A has {len(batch)} prompts and condition B {len(batch_b)}: give pairs")
    if targets is None:
        with intervene(model, list(interventions_a)):
            targets = prediction_targets(model, batch)
    if targets_b is None:
        targets_b = shift_targets(targets, batch.seq_len, batch_b.seq_len)
    if final_norm not in ("original", "own"):
        raise NeuronscopeError(f"final_norm must be 'original' or 'own', not {final_norm!r}")
    scaled = final_norm == "original" and _takes_final_scale(function) and "final_scale" not in options
    options_b = dict(options)
    if scaled:  # condition B read at condition A's final-norm scale
        options_b["final_scale"] = final_norm_scale(model, batch, targets, interventions_a)
    scores_a = _score(model, batch, targets, interventions_a, function, options)
    scores_b = _score(model_b, batch_b, targets_b, interventions_b, function, options_b)
    if scores_a.values.shape != scores_b.values.shape:
        raise NeuronscopeError(f"the two conditions gave scores of shapes {tuple(scores_a.values.shape)} and "
                               f"{tuple(scores_b.values.shape)}: give targets of the same count in both")
    meta = {"method": "comparative", "base_method": name, "difference": "condition B - condition A",
            "options": {key: str(value) for key, value in options.items()},
            "interventions_a": [_describe(item) for item in interventions_a],
            "interventions_b": [_describe(item) for item in interventions_b],
            "two_models": model_b is not model, "two_batches": batch_b is not batch,
            "final_norm": ("condition A's scale for both" if scaled else
                           "each condition's own scale" if _takes_final_scale(function) else "not used"),
            "unit": scores_a.meta.get("unit", "neuron")}
    if not isinstance(scores_a, NeuronScores):  # a mixture-of-experts model's ExpertNeuronScores
        from neuronscope.attribute.moe_comparative import expert_comparative

        return expert_comparative(scores_a, scores_b, meta)
    return ComparativeScores(scores_b.dense() - scores_a.dense(), meta=meta, condition_a=scores_a,
                             condition_b=scores_b)


def _describe(item: Intervention) -> dict[str, Any]:
    if not isinstance(item, Intervention):  # expert / routing interventions of MoE models
        from neuronscope.attribute.moe_comparative import describe_expert_item

        return describe_expert_item(item)
    neurons = None if item.neurons is None else torch.as_tensor(item.neurons).tolist()
    value = item.value if isinstance(item.value, (int, float)) else "tensor"
    return {"site": item.site, "layer": item.layer, "op": item.op, "value": value, "neurons": neurons,
            "positions": item.positions if isinstance(item.positions, str) else "explicit"}


# -- query neurons -------------------------------------------------------------------------------------------------
def value_key(adapter: ModelAdapter, layer: int, head: int, coordinate: int) -> torch.Tensor:
    """The key ``κ [d_model]`` of value neuron ``(layer, head, coordinate)``: its value-projection row times the
    attention input norm's gain, centred for LayerNorm, in float32; ``⟨x, κ⟩ / σ(x)`` is the neuron's value at a
    residual ``x`` up to bias terms.

    Example:
        >>> kappa = value_key(get_adapter(model), 3, 5, 17)
    """
    if not 0 <= coordinate < adapter.head_dim:
        raise NeuronscopeError(f"value coordinate {coordinate} is out of range: heads have {adapter.head_dim}")
    adapter.head_slice(head)  # range check
    rows, _ = value_weight(adapter, layer)
    kappa = rows[kv_head(adapter, head) * adapter.head_dim + coordinate].float()
    norm = attention_input_norm(adapter, layer)
    if norm is not None:
        kappa = kappa * norm.gain.to(kappa.device)
        if norm.kind == "layer":
            kappa = kappa - kappa.mean()
    return kappa


def query_scores(activations: torch.Tensor, value_dots: torch.Tensor, residual_dot: torch.Tensor,
                 value_lpi: torch.Tensor) -> torch.Tensor:
    """Pure math: ``a_j ⟨w_j, κ⟩ / ⟨x_s, κ⟩ · LPI``.

    Args:
        activations: ``[B, layers, d_ff]`` FFN activations at each row's source position.
        value_dots: ``[B or 1, layers, d_ff]`` ``⟨w_j, κ⟩`` (per row where a post norm makes it row-dependent).
        residual_dot: ``[B]`` ``⟨x_s, κ⟩``.
        value_lpi: ``[B, n]`` the value neuron's LPI per target.

    Returns:
        ``[B, n, layers, d_ff]``.

    Example:
        >>> query_scores(torch.ones(1, 1, 2), torch.tensor([[[1.0, 3.0]]]), torch.tensor([4.0]), torch.ones(1, 1))
        tensor([[[[0.2500, 0.7500]]]])
    """
    fractions = activations * value_dots / residual_dot[:, None, None]
    return fractions[:, None] * value_lpi[:, :, None, None]


@torch.no_grad()
def query_neuron_scores(
    model: nn.Module,
    batch: Batch,
    targets: TargetSet | None = None,
    *,
    layer: int,
    head: int,
    coordinate: int,
    source: int | Sequence[int] | torch.Tensor,
    value_lpi: float | torch.Tensor | None = None,
    **lpi_options: Any,
) -> NeuronScores:
    """Query scores of the FFN neurons of layers ``< layer`` for value neuron ``(layer, head, coordinate)`` read at
    source position ``source`` (one per row, or one for all).

    Args:
        value_lpi: the value neuron's importance: a number, ``[examples, targets]``, or None to compute its LPI
            (:func:`head_source_log_probability_increase` with ``coordinates=True``) for ``targets``.
        **lpi_options: passed to that LPI (``candidates=``, ``chunk_size=``, ...).

    Returns:
        NeuronScores ``[examples, targets, n_layers, d_ff]``, zeros from ``layer`` on, ``meta["unit"] ==
        "query_neuron"``.

    Example:
        >>> scores = query_neuron_scores(model, batch, layer=20, head=7, coordinate=33, source=image_positions[:, 5])
        >>> scores.top_k(10)
    """
    adapter = get_adapter(model)
    layer = adapter.check_layer(layer)
    kappa = value_key(adapter, layer, head, coordinate)
    sources = torch.as_tensor(source, dtype=torch.long).reshape(-1)
    sources = sources.expand(len(batch)) if sources.numel() == 1 else sources
    if sources.numel() != len(batch):
        raise NeuronscopeError(f"give one source position for all rows or one per row ({len(batch)}), "
                               f"not {sources.numel()}")
    if targets is None:
        targets = prediction_targets(model, batch)
    if value_lpi is None:
        value_lpi = head_source_log_probability_increase(
            model, batch, targets, heads=[(layer, head)], sources=sources[:, None], coordinates=True, **lpi_options
        ).values[:, :, 0, 0, coordinate]
    value_lpi = torch.as_tensor(value_lpi, dtype=torch.float32).expand(*targets.token_ids.shape)

    earlier = list(range(layer))
    has_post = adapter.family.post_ffn_norm is not None
    sites = ["neuron", "resid_pre"] + (["ffn_out"] if has_post else [])
    with capture(model, sites=sites, layers=sorted(set(earlier) | {layer}), positions=sources, to="cpu") as acts:
        model(**batch.inputs)
    kappa = kappa.cpu()
    residual_dot = acts.get("resid_pre", layer)[:, 0].float() @ kappa  # [B]
    scores = torch.zeros(*targets.token_ids.shape, adapter.n_layers, adapter.d_ff)
    if earlier:
        activations = torch.stack([acts.get("neuron", j)[:, 0].float() for j in earlier], dim=1)  # [B, l, d_ff]
        dots = []
        for j in earlier:
            vectors = adapter.value_vectors(j).float()
            post = post_ffn_norm(adapter, j) if has_post else None
            if post is None:
                dots.append((vectors @ kappa.to(vectors.device)).cpu()[None].expand(len(batch), -1))
            else:
                sigma = post.scale(acts.get("ffn_out", j)[:, 0])  # [B, 1]
                gained = vectors * post.gain.to(vectors.device)
                dots.append((gained @ kappa.to(vectors.device)).cpu()[None] / sigma)
        scores[:, :, :layer] = query_scores(activations, torch.stack(dots, dim=1), residual_dot, value_lpi)
    scores = scores * targets.valid[:, :, None, None]
    meta = {"method": "query_neurons", "unit": "query_neuron", "value_neuron": [layer, head, coordinate],
            "sources": sources.tolist(), "value_lpi": value_lpi.tolist(), "targets": targets.describe(),
            "model": adapter.describe()}
    return NeuronScores(scores, meta=meta)


__all__ = ["ComparativeScores", "comparative", "final_norm_scale", "query_neuron_scores", "query_scores",
           "shift_targets", "value_key"]
