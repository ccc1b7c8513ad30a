"""Where a family keeps its attention's pieces: the norms around it, the module, the value projection.

These are family facts (module names and fused layouts), resolved against a live model through its adapter, so
that the head methods in :mod:`neuronscope.attribute.heads` hold only the math:

- the norms: the attention input norm (``input_layernorm``, ``ln_1``, ...), the post-attention norm of
  sandwich-norm families (Gemma-2/3, OLMo-2), the post-FFN norm;
- the attention module (parent of the output projection) and the key/value head a query head reads (GQA);
- the value projection: ``v_proj``, or the value part of a fused ``qkv_proj`` (Phi-3), ``c_attn`` (GPT-2) or
  ``query_key_value`` (GPT-NeoX, per head ``[q | k | v]``).
"""

from __future__ import annotations

import torch
from torch import nn

from neuronscope.errors import UnsupportedModelError
from neuronscope.models.adapter import FinalNorm, ModelAdapter, norm_affine

_INPUT_NORM_NAMES = ("input_layernorm", "ln_1", "attention_norm")



# -- norms -------------------------------------------------------------------------------------------------------
def post_attention_norm(adapter: ModelAdapter, layer: int) -> FinalNorm | None:
    """The norm applied to the attention output before the residual add, or None (pre-norm families).

    Families with a post-FFN norm (Gemma-2/3, OLMo-2) name it ``post_attention_layernorm``; elsewhere (Llama, Gemma)
    that name is the *pre*-FFN norm, so the family's ``post_ffn_norm`` decides.
    """
    name = adapter.family.extra.get("post_attn_norm")
    if name is None and adapter.family.post_ffn_norm is not None:
        name = "post_attention_layernorm"
    return None if name is None else norm_affine(adapter.module(layer, name), adapter.d_model)


def post_ffn_norm(adapter: ModelAdapter, layer: int) -> FinalNorm | None:
    """The norm applied to the FFN output before the residual add (Gemma-2/3, OLMo-2), or None."""
    name = adapter.family.post_ffn_norm
    return None if name is None else norm_affine(adapter.module(layer, name), adapter.d_model)


def attention_input_norm(adapter: ModelAdapter, layer: int) -> FinalNorm | None:
    """The norm the attention reads the residual through (``input_layernorm``, ``ln_1``), or None (OLMo-2 reads
    the residual directly)."""
    block = adapter.layers[adapter.check_layer(layer)]
    for name in _INPUT_NORM_NAMES:
        module = getattr(block, name, None)
        if isinstance(module, nn.Module):
            return norm_affine(module, adapter.d_model)
    return None


# -- head writes -------------------------------------------------------------------------------------------------
def attention_module(adapter: ModelAdapter, layer: int) -> nn.Module:
    """The attention module of ``layer`` (the parent of its output projection)."""
    return adapter.module(layer, adapter.family.attn_out.rsplit(".", 1)[0])


def head_output_rows(adapter: ModelAdapter, layer: int) -> torch.Tensor:
    """``W_O`` rows ``[H * d_head, d_model]`` as the residual sees them: times the post-attention norm's gain where
    the family has one (the ``1 / σ_a`` is per position and applied by the caller)."""
    rows = adapter.attn_output_weight(layer)
    post = post_attention_norm(adapter, layer)
    if post is not None:
        rows = rows.float() * post.gain.to(rows.device)
    return rows


def kv_head(adapter: ModelAdapter, head: int) -> int:
    """The key/value head that query head ``head`` reads (grouped-query attention)."""
    return head // max(1, adapter.n_heads // max(1, adapter.n_kv_heads))


# -- value states and value weights ------------------------------------------------------------------------------
def value_layout(adapter: ModelAdapter, layer: int) -> tuple[str, nn.Module]:
    attention = attention_module(adapter, layer)
    if hasattr(attention, "v_norm"):
        raise UnsupportedModelError(
            f"family '{adapter.family.name}' normalises its value states (v_norm); attention neurons are not "
            "supported for it: use head-level scores"
        )
    for kind in ("v_proj", "qkv_proj", "c_attn", "query_key_value"):
        module = getattr(attention, kind, None)
        if isinstance(module, nn.Module):
            return kind, module
    raise UnsupportedModelError(
        f"no value projection found in the attention of family '{adapter.family.name}' (looked for v_proj, "
        "qkv_proj, c_attn, query_key_value): attention neurons need one; head-level scores still work"
    )


def value_states_from_projection(adapter: ModelAdapter, kind: str, output: torch.Tensor) -> torch.Tensor:
    """The value states ``[B, T, KV, d_head]`` from the output of a value (or fused q/k/v) projection."""
    heads, kv, head_dim = adapter.n_heads, adapter.n_kv_heads, adapter.head_dim
    batch, length = output.shape[:2]
    if kind == "v_proj":
        values = output
    elif kind == "qkv_proj":  # [q (H d) | k (KV d) | v (KV d)]
        values = output[..., (heads + kv) * head_dim:]
    elif kind == "c_attn":  # GPT-2: [q | k | v], each d_model wide
        values = output[..., 2 * heads * head_dim:]
    else:  # GPT-NeoX: per head [q | k | v]
        values = output.reshape(batch, length, heads, 3 * head_dim)[..., 2 * head_dim:]
    return values.reshape(batch, length, -1, head_dim)


def value_weight(adapter: ModelAdapter, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The value projection as rows ``[KV * d_head, d_model]`` (row ``kv * d_head + n`` makes value coordinate
    ``n`` of key/value head ``kv``) and its bias ``[KV * d_head]`` or None."""
    kind, module = value_layout(adapter, layer)
    heads, kv, head_dim, d_model = adapter.n_heads, adapter.n_kv_heads, adapter.head_dim, adapter.d_model
    weight, bias = module.weight, getattr(module, "bias", None)
    if kind == "c_attn":  # Conv1D [in, out]
        return weight[:, 2 * d_model:].t(), None if bias is None else bias[2 * d_model:]
    if kind == "v_proj":
        return weight, bias
    if kind == "qkv_proj":
        start = (heads + kv) * head_dim
        return weight[start:], None if bias is None else bias[start:]
    rows = weight.reshape(heads, 3 * head_dim, d_model)[:, 2 * head_dim:].reshape(heads * head_dim, d_model)
    return rows, None if bias is None else bias.reshape(heads, 3 * head_dim)[:, 2 * head_dim:].reshape(-1)
