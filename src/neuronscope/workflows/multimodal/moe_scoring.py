"""Captioning and scoring on a mixture-of-experts vision-language model (Pan et al. 2024 on expert neurons).

The dense pipeline's steps (:mod:`.scoring`) with the expert axis:

1. **Capture during generation**: routing and expert-neuron activations at the last position of every forward
   call of ``generate`` (:func:`~neuronscope.trace.experts.capture_experts`, ``positions="last"``; the KV cache
   makes each call after the prefill one position long), i.e. at exactly the positions whose logits produce the
   generated tokens.
2. **Scores**: ``s[l, e, i] = g_e · a_{e,i} · <w_{e,i}, u_t>`` for every neuron of the model (routed experts —
   0 where the token was not routed to ``e`` —, shared experts, dense layers), the math of
   :func:`~neuronscope.attribute.moe_contribution.moe_contribution` (its :func:`scores_from_capture`), in one
   call for every target of the batch; optional frozen final-norm scaling.
3. **Top-k** per (image, target) on the device, over the flat neuron ids of the model's
   :class:`~neuronscope.models.moe.NeuronLayout` (a one-"layer" grid ``(1, n_neurons)``, as
   :meth:`ExpertNeuronScores.as_grid`). The bias terms (what belongs to no neuron: gpt-oss's expert biases times
   ``g_e``, output-projection biases) are not kept; the run's config says so (:func:`bias_note`).

Example:
    >>> generation, steps, score = caption_experts(model, processor, batch, max_new_tokens=10)  # doctest: +SKIP
    >>> tops = score([[target]], k=100)        # one SparseTopK per image, flat ids of the layout  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from neuronscope.aggregate.select import SparseTopK, sparse_top_k
from neuronscope.attribute.moe_contribution import scores_from_capture
from neuronscope.errors import InputError
from neuronscope.inputs.batch import Batch, Generation, generate
from neuronscope.models.adapter import ModelAdapter, get_adapter
from neuronscope.models.moe.weights import unit_biases
from neuronscope.trace import capture
from neuronscope.trace.experts import ExpertCapture, MoEActivations, capture_experts

#: what the heatmap of an expert neuron shows (also in the run's config)
HEATMAP_VALUES = ("g_e * a_{e,i} at each image token: the expert neuron's activation times the router weight "
                  "that multiplies its expert's output; 0 where the token was not routed to expert e")


def score_grid(adapter: ModelAdapter) -> tuple[int, int]:
    """The grid the pipeline's flat ids address: ``(layers, d_ff)`` of a dense model (``layer * d_ff + index``),
    ``(1, n_neurons)`` of an MoE model (the flat ids of its :class:`NeuronLayout`)."""
    if adapter.moe is None:
        return adapter.n_layers, adapter.d_ff
    return 1, adapter.moe.layout.n_neurons


def bias_note(adapter: ModelAdapter) -> str:
    """For the run's config: whether the top-k files leave out bias terms of this MoE model."""
    biased = any(b is not None for layer in range(adapter.n_layers) for b in unit_biases(adapter, layer))
    if biased:
        return ("dropped: the kept scores are neurons only; the bias terms (expert / output-projection biases "
                "times their weights, which belong to no neuron) are not in the top-k files")
    return "none: no unit of this model has a bias, so the neurons' scores are the whole MoE-block contribution"


def take_columns(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor [B, P, ...]`` at columns ``index [B, n]`` (per row): ``[B, n, ...]``."""
    index = index.to(tensor.device)
    index = index.reshape(*index.shape, *([1] * (tensor.dim() - 2))).expand(*index.shape, *tensor.shape[2:])
    return tensor.gather(1, index)


def moe_config(adapter: ModelAdapter, site: str) -> dict[str, Any]:
    """What a run's ``config.json`` adds for an MoE model (the layout, the bias terms left out, what heatmaps
    show); ``{}`` for a dense model. Raises :class:`InputError` for a site other than ``"neuron"`` on MoE."""
    if adapter.moe is None:
        return {}
    _check_site(site)
    return {"neurons": "expert neurons (layer, expert, index); flat ids of 'layout'",
            "layout": adapter.moe.layout.as_dict(), "bias_terms": bias_note(adapter), "heatmap_values": HEATMAP_VALUES}


def _check_site(site: str) -> None:
    if site != "neuron":
        raise InputError(f"on a mixture-of-experts model the multimodal pipeline scores the 'neuron' site (each "
                         f"expert's down-projection input), not {site!r}: pass site='neuron' (--site neuron)")


class _Columns:
    """Columns ``index [B, n]`` (per row, which captured call) of an :class:`ExpertCapture`, read as a capture of
    ``n`` positions: what :func:`scores_from_capture` reads (``weighted``, ``moe``, ``dense``)."""

    def __init__(self, acts: ExpertCapture, index: torch.Tensor) -> None:
        self.acts, self.index = acts, index

    def _take(self, tensor: torch.Tensor) -> torch.Tensor:
        return take_columns(tensor, self.index)

    def moe(self, layer: int) -> MoEActivations:
        m = self.acts.moe(layer)
        return replace(m, experts=self._take(m.experts), router_weights=self._take(m.router_weights),
                       weights=self._take(m.weights), acts=self._take(m.acts), logits=self._take(m.logits),
                       shared_acts=[self._take(a) for a in m.shared_acts],
                       shared_weights=[self._take(w) for w in m.shared_weights])

    def dense(self, layer: int) -> torch.Tensor:
        return self._take(self.acts.dense(layer))

    def weighted(self, layer: int) -> torch.Tensor:
        return self.moe(layer).weighted() if self.acts.adapter.moe.is_moe(layer) else self.dense(layer)


Scorer = Callable[[Sequence[Sequence[Any]], int], list[SparseTopK]]


@torch.no_grad()
def caption_experts(
    model: nn.Module,
    processor: Any,
    batch: Batch,
    *,
    site: str = "neuron",
    final_norm: bool = False,
    max_new_tokens: int = 20,
) -> tuple[Generation, int, Scorer]:
    """Generate captions of an (encoded, on-device) batch while capturing the expert neurons at every step.

    Returns:
        ``(generation, steps, score)``: the generation, the number of steps captured (a generated token needs
        the call that produced it), and ``score(targets, k)``, which takes per image a list of targets (objects
        with ``.step`` and ``.token_id``) and returns per image a :class:`SparseTopK` ``[n_targets, k]`` on the
        CPU (float32 values, flat ids of the layout, best first; ties by ascending id).
    """
    _check_site(site)
    adapter = get_adapter(model)
    layers = list(range(adapter.n_layers))
    last = adapter.n_layers - 1
    with ExitStack() as stack:
        acts = stack.enter_context(capture_experts(model, layers=layers, positions="last"))
        resid = stack.enter_context(capture(model, "resid_post", [last], "last")) if final_norm else None
        generation = generate(model, processor, batch, max_new_tokens=max_new_tokens)
    steps = int(acts.positions(layer=layers[0]).shape[1])  # one column per forward call
    grid = score_grid(adapter)

    def score(targets: Sequence[Sequence[Any]], k: int) -> list[SparseTopK]:
        width = max((len(row) for row in targets), default=0)
        empty = SparseTopK(torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long), *grid)
        if width == 0:
            return [empty for _ in targets]
        index = torch.zeros(len(targets), width, dtype=torch.long)
        token_ids = torch.zeros_like(index)
        for row, row_targets in enumerate(targets):
            for j, target in enumerate(row_targets):
                index[row, j], token_ids[row, j] = int(target.step), int(target.token_id)
        residual = None if resid is None else take_columns(resid.get("resid_post", last), index)  # [B, n, d]
        scores, _, _ = scores_from_capture(adapter, _Columns(acts, index), token_ids, layers, residual)  # [B, n, N]
        tops = []
        for row, row_targets in enumerate(targets):
            if not row_targets:
                tops.append(empty)
                continue
            top = sparse_top_k(scores[row, :len(row_targets), None, :], k)
            tops.append(SparseTopK(top.values.float().cpu(), top.flat_indices.cpu(), *grid))
        return tops

    return generation, steps, score
