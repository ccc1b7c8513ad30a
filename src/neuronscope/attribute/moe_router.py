"""Router statistics: which experts the tokens at chosen positions (a concept's tokens, a prompt's last token) are
sent to, per MoE layer — counts, the share of tokens, the mean router weight when routed and the mean router score
(softmax over all experts, or sigmoid for sigmoid routers) over all those tokens.

Example:
    >>> stats = routing_statistics(model, batch, positions=paris_positions)   # ragged per-row lists are fine
    >>> stats.top_experts(layer=3, k=4)                                        # [(expert, share), ...]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from neuronscope.errors import NeuronscopeError, ResultFileError
from neuronscope.inputs import Batch
from neuronscope.models.adapter import get_adapter
from neuronscope.models.moe import expert_scores
from neuronscope.results.io import read_json, write_json
from neuronscope.trace.experts import capture_experts
from neuronscope.trace.positions import PositionSpec


def router_statistics(experts: torch.Tensor, weights: torch.Tensor, scores: torch.Tensor,
                      valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Pure math over ``N`` tokens of one layer: ``experts [N, k]``, ``weights [N, k]``, ``scores [N, E]``,
    ``valid [N]`` → ``counts [E]``, ``fraction [E]`` (of the valid tokens), ``mean_weight [E]`` (over the tokens
    routed to each expert; 0 where none) and ``mean_score [E]`` (over all valid tokens).

    Example:
        >>> router_statistics(torch.tensor([[0, 1], [0, 2]]), torch.ones(2, 2), torch.rand(2, 3))["counts"]
        tensor([2., 1., 1.])
    """
    n_experts = scores.shape[-1]
    valid = torch.ones(experts.shape[0], dtype=torch.bool) if valid is None else valid.bool()
    experts, weights, scores = experts[valid].long(), weights[valid].double(), scores[valid].double()
    counts = torch.zeros(n_experts, dtype=torch.float64).index_add(0, experts.reshape(-1),
                                                                    torch.ones(experts.numel(), dtype=torch.float64))
    weight_sum = torch.zeros(n_experts, dtype=torch.float64).index_add(0, experts.reshape(-1), weights.reshape(-1))
    n_tokens = max(int(valid.sum()), 1)
    return {"counts": counts, "fraction": counts / n_tokens,
            "mean_weight": torch.where(counts > 0, weight_sum / counts.clamp(min=1), torch.zeros_like(counts)),
            "mean_score": scores.sum(0) / n_tokens}


@dataclass
class RouterStatistics:
    """Per MoE layer ``[layers, E]``: ``counts``, ``fraction``, ``mean_weight``, ``mean_score`` over ``n_tokens``
    tokens; a JSON file (``save`` / ``load``)."""

    format: ClassVar[str] = "neuronscope.router_statistics"

    layers: list[int]
    n_tokens: int
    counts: torch.Tensor
    fraction: torch.Tensor
    mean_weight: torch.Tensor
    mean_score: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def top_experts(self, layer: int, k: int = 5) -> list[tuple[int, float]]:
        """The ``k`` experts of ``layer`` that most of the tokens go to: ``(expert, share of tokens)``."""
        if layer not in self.layers:
            raise NeuronscopeError(f"layer {layer} has no router statistics here: layers {self.layers}")
        share = self.fraction[self.layers.index(layer)]
        values, experts = share.topk(min(k, share.numel()))
        return [(int(e), float(v)) for e, v in zip(experts, values, strict=True)]

    def as_dict(self) -> dict[str, Any]:
        return {"format": self.format, "layers": self.layers, "n_tokens": self.n_tokens,
                "counts": self.counts.tolist(), "fraction": self.fraction.tolist(),
                "mean_weight": self.mean_weight.tolist(), "mean_score": self.mean_score.tolist(), "meta": self.meta}

    def summary(self) -> str:
        lines = [f"routing of {self.n_tokens} tokens over {len(self.layers)} MoE layers"]
        lines += [f"  layer {layer}: " + ", ".join(f"expert {e} {share:.0%}" for e, share in self.top_experts(layer, 3))
                  for layer in self.layers]
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        return write_json(Path(path).with_suffix(".json"), self.as_dict())

    @classmethod
    def load(cls, path: str | Path) -> RouterStatistics:
        data = read_json(Path(path).with_suffix(".json"), what="router statistics")
        if not isinstance(data, dict) or data.get("format") != cls.format:
            raise ResultFileError(f"{Path(path).with_suffix('.json')} does not hold router statistics")
        tensors = {key: torch.tensor(data[key], dtype=torch.float64)
                   for key in ("counts", "fraction", "mean_weight", "mean_score")}
        return cls(data["layers"], data["n_tokens"], meta=data.get("meta", {}), **tensors)


def merge_router_statistics(parts: list[RouterStatistics]) -> RouterStatistics:
    """Pure: the statistics of the union of the token sets of ``parts`` (the same layers; e.g. batches of one
    corpus): counts add, shares over the total tokens, mean weights weighted by counts, mean scores by tokens.

    Example:
        >>> merged = merge_router_statistics([stats_of_batch_1, stats_of_batch_2])      # doctest: +SKIP
    """
    if not parts:
        raise NeuronscopeError("no router statistics to merge")
    if any(part.layers != parts[0].layers for part in parts):
        raise NeuronscopeError("router statistics of different layers cannot be merged")
    counts = sum(part.counts for part in parts)
    n_tokens = sum(part.n_tokens for part in parts)
    weight_sums = sum(part.mean_weight * part.counts for part in parts)
    score_sums = sum(part.mean_score * part.n_tokens for part in parts)
    return RouterStatistics(list(parts[0].layers), n_tokens, counts, counts / max(n_tokens, 1),
                            torch.where(counts > 0, weight_sums / counts.clamp(min=1), torch.zeros_like(counts)),
                            score_sums / max(n_tokens, 1), dict(parts[0].meta))


@torch.no_grad()
def routing_statistics(model: nn.Module, batch: Batch, positions: PositionSpec = "all",
                       layers: list[int] | None = None) -> RouterStatistics:
    """Router statistics of the tokens at ``positions`` (padding never counts) of ``batch``, for every MoE layer
    of ``layers`` (default all).

    Example:
        >>> routing_statistics(model, batch, positions="last").top_experts(1)
    """
    adapter = get_adapter(model)
    if adapter.moe is None:
        raise NeuronscopeError("router statistics need a mixture-of-experts model")
    layer_list = [layer for layer in adapter.resolve_layers(layers) if adapter.moe.is_moe(layer)]
    if not layer_list:
        raise NeuronscopeError("none of these layers is a mixture-of-experts layer")
    with capture_experts(model, layers=layer_list, positions=positions, to="cpu") as acts:
        model(**batch.inputs)
    absolute = acts.positions("moe.acts", layer_list[0]).long()
    absolute = absolute.expand(len(batch), -1) if absolute.shape[0] == 1 else absolute
    absolute = torch.where(absolute < 0, absolute + batch.seq_len, absolute)  # explicit: from the prompt's end
    mask = batch.inputs.get("attention_mask")
    valid = torch.ones_like(absolute, dtype=torch.bool) if mask is None else mask.cpu().gather(
        1, absolute.clamp(0, mask.shape[1] - 1)).bool()
    if acts._explicit is not None:
        valid &= acts._explicit.valid.expand_as(valid)
    per_layer = []
    for layer in layer_list:
        routing = acts.moe(layer)
        scores = expert_scores(adapter.moe.family.routing, routing.logits)
        per_layer.append(router_statistics(routing.experts.flatten(0, 1), routing.router_weights.flatten(0, 1),
                                           scores.flatten(0, 1), valid.flatten()))
    stacked = {key: torch.stack([stats[key] for stats in per_layer]) for key in per_layer[0]}
    meta = {"positions": positions if isinstance(positions, str) else "explicit", "model": adapter.describe()}
    return RouterStatistics(layer_list, int(valid.sum()), meta=meta, **stacked)
