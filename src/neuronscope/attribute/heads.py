"""Attention heads and attention neurons: where their writes into the residual stream come from.

Definitions (DESIGN §2, §3.3), for decoder layer ``l``, query head ``h`` (key/value head ``kv(h) = h // (H / KV)``),
scored position ``t`` and source position ``s``:

- **head output** ``o_h = x_attn[t, slice_h] @ W_O[slice_h]``: the head's slice of the attention output
  projection's input (site ``attn``) times its rows of ``W_O [H * d_head, d_model]``. The heads' outputs plus the
  projection's bias sum to the attention output (site ``attn_out``).
- **per-source contribution** ``c_{h,s} = A_h[t, s] · (v_s[kv(h)] @ W_O[slice_h])``, with ``A_h`` the head's
  attention probabilities and ``v_s`` the value states. ``Σ_s c_{h,s} = o_h``.
- **attention neuron** ``(l, h, n, s)``: coordinate ``n`` of the head's weighted value vector from source ``s``,
  ``A_h[t, s] · v_s[kv(h), n]``; its write is that number times row ``n`` of ``W_O[slice_h]``.
  ``Σ_n`` of the writes is ``c_{h,s}``.

Families that normalise the attention output before the residual add (Gemma-2/3, OLMo-2, GLM-4: a
``post_attn_norm``) write ``post_norm(attn_out)``, which is not a sum of head outputs. There every write above is
read through that norm *frozen* at the attention output's own scale ``σ_a``: ``g_a ⊙ o_h / σ_a``, the same
linearisation as the frozen final norm; then the writes sum to ``post_norm(attn_out)`` exactly (no o_proj bias in
those families). Residual multipliers (Granite, Falcon-H1) scale every write the same way
(:meth:`neuronscope.models.adapter.ModelAdapter.attn_write`).

Attention probabilities come from the model's own eager attention (the decoder is switched to ``"eager"`` for the
one forward and switched back), value states from a hook on the value projection (``v_proj``, or the value part of a
fused ``qkv_proj`` / ``c_attn`` / ``query_key_value``). Every use checks ``Σ_s A_h[t, s] v_s = x_attn[t, slice_h]``
against the captured head site and raises if a family computes its heads differently.

Example:
    >>> with attention_probe(model, layers=[1]) as probe:
    ...     model(**batch.inputs)
    >>> probe.weights[1].shape, probe.values[1].shape   # [B, H, T, T], [B, T, KV, d_head]
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from neuronscope.errors import NeuronscopeError, ResultFileError
from neuronscope.models.adapter import ModelAdapter
from neuronscope.models.attention import attention_module, value_layout, value_states_from_projection


# -- head writes -------------------------------------------------------------------------------------------------
def head_outputs(adapter: ModelAdapter, layer: int, head_site: torch.Tensor) -> torch.Tensor:
    """Each head's output ``[..., H, d_model]`` from the head site ``[..., H * d_head]`` (no bias, no post norm).

    Example:
        >>> outs = head_outputs(adapter, 0, acts.get("attn", 0))      # [B, P, H, d]
        >>> outs.sum(-2) + o_proj_bias                                 # == acts.get("attn_out", 0)
    """
    weight = adapter.attn_output_weight(layer)
    head_dim = adapter.head_dim_of(layer)
    per_head = head_site.reshape(*head_site.shape[:-1], adapter.n_heads, head_dim)
    rows = weight.reshape(adapter.n_heads, head_dim, -1).to(per_head.device, per_head.dtype)
    return torch.einsum("...hk,hkd->...hd", per_head, rows)



# -- capture of attention probabilities and value states ---------------------------------------------------------
@dataclass
class AttentionProbe:
    """What :func:`attention_probe` recorded, per layer: ``weights[l] [B, H, T, T]`` (query × key probabilities)
    and ``values[l] [B, T, KV, d_head]``."""

    weights: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)


@contextmanager
def eager_attention(model: nn.Module, adapter: ModelAdapter) -> Iterator[None]:
    """Run the language model with eager attention inside the block (the only implementation that returns the
    attention probabilities), restoring the previous implementation after."""
    owner = adapter.decoder if hasattr(adapter.decoder, "set_attn_implementation") else model
    before = owner.config._attn_implementation
    if before == "eager":
        yield
        return
    owner.set_attn_implementation("eager")
    try:
        yield
    finally:
        owner.set_attn_implementation(before)


@contextmanager
def attention_probe(model: nn.Module, layers: list[int], adapter: ModelAdapter | None = None) -> Iterator[AttentionProbe]:
    """Record attention probabilities and value states of ``layers`` while the block runs one forward.

    Example:
        >>> with attention_probe(model, [0]) as probe:
        ...     model(**batch.inputs)
        >>> probe.weights[0].sum(-1)            # ones (rows of probabilities)
    """
    from neuronscope.models.adapter import get_adapter

    adapter = adapter or get_adapter(model)
    probe = AttentionProbe()
    handles = []
    try:
        for layer in layers:
            kind, projection = value_layout(adapter, layer)

            def keep_values(module: nn.Module, args: tuple, output: Any, layer: int = layer, kind: str = kind) -> None:
                probe.values[layer] = value_states_from_projection(adapter, kind, output.detach(), layer)

            def keep_weights(module: nn.Module, args: tuple, output: Any, layer: int = layer) -> None:
                weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if weights is None:
                    raise NeuronscopeError(
                        f"the attention of layer {layer} returned no probabilities even in eager mode: this family "
                        "does not expose them, so attention neurons cannot be scored"
                    )
                probe.weights[layer] = weights.detach()

            handles.append(projection.register_forward_hook(keep_values))
            handles.append(attention_module(adapter, layer).register_forward_hook(keep_weights))
        with eager_attention(model, adapter):
            yield probe
    finally:
        for handle in handles:
            handle.remove()


def weighted_values(
    weights: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, heads: torch.Tensor, kv_heads: torch.Tensor
) -> torch.Tensor:
    """Pure math: ``A_h[t, s] · v_s[kv(h), n]`` for each row's scored positions.

    Args:
        weights: ``[B, H, T, T]`` attention probabilities.
        values: ``[B, T, KV, d_head]`` value states.
        positions: ``[B, n]`` scored (query) positions.
        heads: ``[k]`` query heads; ``kv_heads``: ``[k]`` their key/value heads.

    Returns:
        ``[B, n, k, T, d_head]``: summed over ``T`` it is each head's slice of the head site at ``positions``.
    """
    batch = torch.arange(weights.shape[0], device=weights.device)[:, None]
    rows = weights[:, heads.to(weights.device)]  # [B, k, T, T]
    probs = rows.permute(0, 2, 1, 3)[batch, positions.to(weights.device)]  # [B, n, k, T]
    per_head = values[:, :, kv_heads.to(values.device)].permute(0, 2, 1, 3)  # [B, k, T, d_head]
    return probs.float()[..., None] * per_head.float()[:, None]


def check_weighted_values(weighted: torch.Tensor, head_site: torch.Tensor, where: str) -> None:
    """Raise unless ``Σ_s weighted = head_site`` (``[B, n, k, T, d]`` vs ``[B, n, k, d]``), i.e. unless the model
    computes each head as probabilities times value states."""
    total = weighted.sum(-2)
    target = head_site.float().to(total.device)
    error = (total - target).norm() / (target.norm() + 1e-6)
    tolerance = 1e-3 if head_site.dtype == torch.float32 else 5e-2
    if float(error) > tolerance:
        raise NeuronscopeError(
            f"{where}: attention probabilities × value states do not reproduce the heads' outputs (relative error "
            f"{float(error):.2g}): this family computes attention differently, so attention-neuron scores would be "
            "wrong; use head-level scores"
        )


# -- results -----------------------------------------------------------------------------------------------------
@dataclass
class HeadSourceScores:
    """Scores of chosen heads per source position (and per value coordinate for attention neurons).

    Attributes:
        values: ``[examples, targets, k, S]`` (per-source contributions) or ``[examples, targets, k, S, d_head]``
            (attention neurons).
        heads: ``[k, 2]`` (layer, head) rows in the order of ``values``' third dimension.
        sources: ``[examples, S]`` absolute source positions of ``values``' fourth dimension.
        meta: how they were made.

    Example:
        >>> patches = scores.normalised()[0, 0, 0]     # min-max over the sources of the first head: [S]
    """

    format: ClassVar[str] = "neuronscope.head_source_scores"

    values: torch.Tensor
    heads: torch.Tensor
    sources: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def normalised(self) -> torch.Tensor:
        """Min-max normalised over the sources (and coordinates) of each (example, target, head): ``values``'
        shape, in ``[0, 1]`` (zeros where all are equal)."""
        flat = self.values.flatten(3)
        low, high = flat.min(-1, keepdim=True).values, flat.max(-1, keepdim=True).values
        span = torch.where(high > low, high - low, torch.ones_like(high))
        return ((flat - low) / span).view_as(self.values)

    def top_k(self, k: int, example: int | None = None, target: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` of one (example, target), or of the sum over those not given: rows ``[k, 3]`` (layer, head,
        source position) or ``[k, 4]`` (…, value coordinate) for attention neurons, and their values ``[k]``.

        Example:
            >>> rows, values = scores.top_k(5, example=0)      # e.g. the value neurons to trace query neurons for
        """
        values = self.values if example is None else self.values[example:example + 1]
        values = values if target is None else values[:, target:target + 1]
        sources = self.sources if example is None else self.sources[example:example + 1]
        if not bool((sources == sources[:1]).all()):
            raise NeuronscopeError("the examples have different source positions: pass example= to rank one of them")
        grid = values.sum(dim=(0, 1))  # [heads, S] or [heads, S, d_head]
        top_values, flat = grid.flatten().topk(min(k, grid.numel()))
        index = torch.stack(torch.unravel_index(flat, grid.shape), dim=1)  # [k, 2 or 3]
        rows = torch.cat([self.heads[index[:, 0]], sources[0][index[:, 1]][:, None], index[:, 2:]], dim=1)
        return rows, top_values

    def as_dict(self) -> dict[str, Any]:
        return {"format": self.format, "shape": list(self.values.shape), "heads": self.heads.tolist(),
                "meta": self.meta}

    def summary(self) -> str:
        examples, targets, heads, sources = self.values.shape[:4]
        return (f"{self.meta.get('method', 'head-source')} scores of {heads} heads x {sources} source positions "
                f"({examples} examples x {targets} targets)")

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` and ``path.json`` atomically; returns the JSON path."""
        from neuronscope.results.io import write_json, write_safetensors

        path = Path(path)
        write_safetensors(path.with_suffix(".safetensors"),
                          {"values": self.values, "heads": self.heads, "sources": self.sources})
        return write_json(path.with_suffix(".json"), self.as_dict())

    @classmethod
    def load(cls, path: str | Path) -> HeadSourceScores:
        from neuronscope.results.io import read_json, read_safetensors

        path = Path(path)
        meta = read_json(path.with_suffix(".json"), what="head-source scores metadata")
        if not isinstance(meta, dict) or meta.get("format") != cls.format:
            raise ResultFileError(f"{path.with_suffix('.json')} does not hold head-source scores")
        tensors, _ = read_safetensors(path.with_suffix(".safetensors"), what="head-source scores")
        return cls(tensors["values"], tensors["heads"], tensors["sources"], meta["meta"])
