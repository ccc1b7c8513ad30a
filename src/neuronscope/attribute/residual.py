"""Where a neuron's write lands: the residual an FFN adds to and the sites that give it, per family (sequential or
parallel residual, post-FFN norms, residual multipliers). Shared by the scoring methods; the family facts
themselves live in :mod:`neuronscope.models` (:meth:`~neuronscope.models.adapter.ModelAdapter.ffn_write`).

Example:
    >>> with capture(model, sites=["neuron", "resid_post"] + ffn_sites(adapter), layers=[1]) as acts:
    ...     model(**batch.inputs)
    >>> r = ffn_residual(adapter, acts, 1)          # [B, P, d]: what neuron writes of layer 1 are added to
"""

from __future__ import annotations

import torch

from neuronscope.models.accounting import WriteMap
from neuronscope.models.adapter import ModelAdapter
from neuronscope.trace import Capture


def ffn_sites(adapter: ModelAdapter) -> list[str]:
    """Sites that :func:`ffn_residual` reads, plus ``ffn_out`` where the FFN's write is not its output unchanged."""
    sites = ["resid_post", "ffn_out"] if adapter.parallel_residual else ["ffn_in"]
    needs_out = any(not adapter.ffn_write(layer).identity for layer in adapter.ffn_layers)
    return sites + (["ffn_out"] if needs_out and "ffn_out" not in sites else [])


def ffn_residual(adapter: ModelAdapter, acts: Capture, layer: int) -> torch.Tensor:
    """The residual the FFN's write lands on, ``[B, n, d]``: ``ffn_in`` (sequential), or the layer output minus
    the FFN's write (parallel residual: ``x + attn(x)`` plus any parallel mixer)."""
    if adapter.parallel_residual:
        write = adapter.ffn_write(layer).apply(acts.get("ffn_out", layer))
        return _wide(acts.get("resid_post", layer)) - _wide(write)
    return _wide(acts.get("ffn_in", layer))


def scored_value_vectors(adapter: ModelAdapter, layer: int) -> torch.Tensor:
    """``[d_ff, d]`` the vectors whose readout scores a neuron's write: the value vectors, times the post-FFN norm's
    gain ``g_p`` in families that have one (its ``m / σ_p`` is a per-position factor, for the coefficients)."""
    vectors = adapter.value_vectors(layer)
    write = adapter.ffn_write(layer)
    gain = None if write.identity else write.gain()
    return vectors if gain is None else vectors.to(gain.dtype) * gain.to(vectors.device)


def _wide(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def write_note(write: WriteMap | None) -> str | None:
    """One line for result metadata: how a sub-block's share reaches the residual (None: unchanged)."""
    if write is None or write.identity:
        return None
    parts = [f"times {write.multiplier:g}"] if write.multiplier != 1.0 else []
    return ", ".join(parts + (["post norm frozen at the sub-block output's scale"] if write.norm else []))
