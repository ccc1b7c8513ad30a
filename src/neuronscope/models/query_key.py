"""The query and key projections of a layer's attention, per head, as the family computes them (before RoPE).

Family facts: separate ``q_proj`` / ``k_proj`` (Llama, Mistral, Qwen, Gemma, OLMo), or the query and key parts of a
fused ``qkv_proj`` (Phi-3: ``[q (H·d) | k (KV·d) | v]``), ``c_attn`` (GPT-2: ``[q | k | v]``, each d_model wide) or
``query_key_value`` (GPT-NeoX: per head ``[q | k | v]``); then the family's query/key norm if it has one
(``q_norm`` / ``k_norm``: over each head's ``d_head`` in Qwen3 and Gemma-3, over all heads at once in OLMo-2).

Example:
    >>> queries, keys = query_key_projections(adapter, layer=10)
    >>> queries(normed).shape, keys(normed).shape         # [..., H, d_head], [..., KV, d_head]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from neuronscope.errors import UnsupportedModelError
from neuronscope.models.adapter import ModelAdapter
from neuronscope.models.attention import attention_module

Projection = Callable[[torch.Tensor], torch.Tensor]


def _with_norm(norm: nn.Module | None, flat: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    if norm is None:
        return flat.reshape(*flat.shape[:-1], heads, head_dim)
    weight = getattr(norm, "weight", None)
    if weight is not None and weight.numel() == heads * head_dim:  # one norm over all heads (OLMo-2)
        return norm(flat).reshape(*flat.shape[:-1], heads, head_dim)
    return norm(flat.reshape(*flat.shape[:-1], heads, head_dim))


def query_key_projections(adapter: ModelAdapter, layer: int) -> tuple[Projection, Projection]:
    """Functions mapping normalised hidden states ``[..., d]`` to per-head queries ``[..., H, d_head]`` and keys
    ``[..., KV, d_head]`` (projection bias and query/key norms included, no rotary embedding, no scaling)."""
    attention = attention_module(adapter, layer)
    heads, kv, head_dim, d_model = adapter.n_heads, adapter.n_kv_heads, adapter.head_dim, adapter.d_model
    q_norm, k_norm = getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)
    if isinstance(getattr(attention, "q_proj", None), nn.Module):
        q_proj, k_proj = attention.q_proj, attention.k_proj
        return (lambda x: _with_norm(q_norm, q_proj(x), heads, head_dim),
                lambda x: _with_norm(k_norm, k_proj(x), kv, head_dim))
    for kind in ("qkv_proj", "c_attn", "query_key_value"):
        fused = getattr(attention, kind, None)
        if isinstance(fused, nn.Module):
            break
    else:
        raise UnsupportedModelError(
            f"no query/key projection found in the attention of family '{adapter.family.name}' (looked for q_proj, "
            "qkv_proj, c_attn, query_key_value): the query/key similarity of in-context heads needs one"
        )

    def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = fused(x)
        if kind == "qkv_proj":
            return out[..., :heads * head_dim], out[..., heads * head_dim:(heads + kv) * head_dim]
        if kind == "c_attn":
            return out[..., :d_model], out[..., d_model:2 * d_model]
        per_head = out.reshape(*out.shape[:-1], heads, 3 * head_dim)
        return per_head[..., :head_dim].flatten(-2), per_head[..., head_dim:2 * head_dim].flatten(-2)

    return (lambda x: _with_norm(q_norm, split(x)[0], heads, head_dim),
            lambda x: _with_norm(k_norm, split(x)[1], kv, head_dim))
