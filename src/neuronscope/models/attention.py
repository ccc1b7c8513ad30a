"""Where a family keeps its attention's pieces: the norms around it, the module, the value projection.

These are family facts declared in each :class:`~neuronscope.models.spec.FamilySpec` (``attn_norm``,
``post_attn_norm``, ``post_ffn_norm``, ``value`` and ``value_layout``), resolved against a live model through its
adapter, so that the head methods in :mod:`neuronscope.attribute.heads` hold only the math:

- the norms: the attention input norm (``input_layernorm``, ``ln_1``, ...), the post-attention norm of
  sandwich-norm families (Gemma-2/3, OLMo-2, GLM-4), the post-FFN norm;
- the attention module (parent of the output projection) and the key/value head a query head reads (GQA);
- the value projection: ``v_proj``, or the value part of a fused ``qkv_proj`` / ``Wqkv`` / ``c_attn``
  (``[q | k | v]``) or ``query_key_value`` (GPT-NeoX, BLOOM, Persimmon: per head ``[q | k | v]``).
"""

from __future__ import annotations

import torch
from torch import nn

from neuronscope.errors import UnsupportedModelError
from neuronscope.models.accounting import FinalNorm, norm_affine
from neuronscope.models.adapter import ModelAdapter


# -- norms -------------------------------------------------------------------------------------------------------
def post_attention_norm(adapter: ModelAdapter, layer: int) -> FinalNorm | None:
    """The norm applied to the attention output before the residual add (sandwich norms), or None."""
    name = adapter.family.post_attn_norm
    return None if name is None else norm_affine(adapter.module(layer, name), adapter.d_model)


def post_ffn_norm(adapter: ModelAdapter, layer: int) -> FinalNorm | None:
    """The norm applied to the FFN output before the residual add (Gemma-2/3, OLMo-2), or None."""
    name = adapter.family.post_ffn_norm
    return None if name is None else norm_affine(adapter.module(layer, name), adapter.d_model)


def attention_input_norm(adapter: ModelAdapter, layer: int) -> FinalNorm | None:
    """The norm the attention reads the residual through (``input_layernorm``, ``ln_1``), or None (OLMo-2 reads
    the residual directly)."""
    names = adapter.family.attn_norm
    if names is None:
        return None
    block = adapter.layers[adapter.check_layer(layer)]
    for name in names.split("|"):
        module = getattr(block, name, None)
        if isinstance(module, nn.Module):
            return norm_affine(module, adapter.d_model)
    raise UnsupportedModelError(f"layer {layer} has none of the attention input norms {names}")


# -- head writes -------------------------------------------------------------------------------------------------
def attention_module(adapter: ModelAdapter, layer: int) -> nn.Module:
    """The attention module of ``layer`` (the parent of its output projection)."""
    return adapter.module(adapter.require_attention(layer), adapter.family.attention)


def head_output_rows(adapter: ModelAdapter, layer: int) -> torch.Tensor:
    """``W_O`` rows ``[H * d_head, d_model]`` as the residual sees them: times the residual multiplier and the
    post-attention norm's gain where the family has them (the ``1 / σ_a`` is per position and applied by the
    caller, see :meth:`neuronscope.models.accounting.WriteMap.position_scale`)."""
    rows = adapter.attn_output_weight(layer)
    write = adapter.attn_write(layer)
    gain = write.gain()
    if gain is not None:
        rows = rows.float() * gain.to(rows.device)
    return rows


def kv_head(adapter: ModelAdapter, head: int, layer: int | None = None) -> int:
    """The key/value head that query head ``head`` reads (grouped-query attention)."""
    kv = adapter.n_kv_heads if layer is None else adapter.n_kv_heads_of(layer)
    return head // max(1, adapter.n_heads // max(1, kv))


# -- value states and value weights ------------------------------------------------------------------------------
def value_layout(adapter: ModelAdapter, layer: int) -> tuple[str, nn.Module]:
    """``(layout, module)`` of layer ``layer``'s value projection (see :data:`~neuronscope.models.spec.VALUE_LAYOUTS`)."""
    attention = attention_module(adapter, layer)
    spec = adapter.family
    if hasattr(attention, "v_norm"):
        raise UnsupportedModelError(
            f"family '{spec.name}' normalises its value states (v_norm); attention neurons are not "
            "supported for it: use head-level scores"
        )
    module = None if spec.value is None else getattr(attention, spec.value, None)
    if not isinstance(module, nn.Module):
        raise UnsupportedModelError(
            f"family '{spec.name}' has no single value projection to read value states from (its attention is "
            f"{type(attention).__name__}): attention neurons need one; head-level scores still work"
        )
    return spec.value_layout, module


# The projection names earlier releases used as layout names.
_LEGACY_KINDS = {"v_proj": "separate", "qkv_proj": "qkv", "query_key_value": "per_head_qkv"}


def value_states_from_projection(adapter: ModelAdapter, kind: str, output: torch.Tensor,
                                 layer: int | None = None) -> torch.Tensor:
    """The value states ``[B, T, KV, d_head]`` from the output of a value (or fused q/k/v) projection.

    ``kind`` is the family's value layout (:data:`~neuronscope.models.spec.VALUE_LAYOUTS`, as returned by
    :func:`value_layout`); ``layer`` picks that layer's head sizes (default: the model-wide ones).
    """
    kind = _LEGACY_KINDS.get(kind, kind)
    heads = adapter.n_heads
    kv = adapter.n_kv_heads if layer is None else adapter.n_kv_heads_of(layer)
    head_dim = adapter.head_dim if layer is None else adapter.head_dim_of(layer)
    batch, length = output.shape[:2]
    if kind == "separate":
        values = output
    elif kind == "qkv":  # [q (H d) | k (KV d) | v (KV d)]
        values = output[..., (heads + kv) * head_dim:]
    elif kind == "c_attn":  # GPT-2: [q | k | v], each d_model wide
        values = output[..., 2 * heads * head_dim:]
    else:  # per head [q | k | v]
        values = output.reshape(batch, length, heads, 3 * head_dim)[..., 2 * head_dim:]
    return values.reshape(batch, length, -1, head_dim)


def value_weight(adapter: ModelAdapter, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The value projection as rows ``[KV * d_head, d_model]`` (row ``kv * d_head + n`` makes value coordinate
    ``n`` of key/value head ``kv``) and its bias ``[KV * d_head]`` or None."""
    kind, module = value_layout(adapter, layer)
    heads, kv = adapter.n_heads, adapter.n_kv_heads_of(layer)
    head_dim, d_model = adapter.head_dim_of(layer), adapter.d_model
    weight, bias = module.weight, getattr(module, "bias", None)
    if kind == "c_attn":  # Conv1D [in, out]
        return weight[:, 2 * d_model:].t(), None if bias is None else bias[2 * d_model:]
    if kind == "separate":
        return weight, bias
    if kind == "qkv":
        start = (heads + kv) * head_dim
        return weight[start:], None if bias is None else bias[start:]
    rows = weight.reshape(heads, 3 * head_dim, d_model)[:, 2 * head_dim:].reshape(heads * head_dim, d_model)
    return rows, None if bias is None else bias.reshape(heads, 3 * head_dim)[:, 2 * head_dim:].reshape(-1)
