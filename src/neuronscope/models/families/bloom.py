"""BLOOM and MPT: ALiBi decoders with LayerNorm and GELU FFNs.

BLOOM: ``h[i].mlp.{dense_h_to_4h, gelu_impl, dense_4h_to_h}``, ``self_attention.dense``, fused
``query_key_value`` per head ``[q | k | v]``; with ``apply_residual_connection_post_layernorm`` the residual is the
*normalised* stream, which no neuron write accounts for, so that setting is refused. MPT:
``blocks[i].ffn.{up_proj, act, down_proj}``, ``attn.out_proj``, norms ``norm_1`` / ``norm_2``; its fused
``Wqkv`` is ``[q | k | v]``.
"""

from neuronscope.models.families.common import plain


def _mpt_alibi(config) -> bool:
    attn = getattr(config, "attn_config", None)
    return bool(attn.get("alibi", False) if isinstance(attn, dict) else getattr(attn, "alibi", False))


def _bloom_refuse(config) -> str | None:
    if getattr(config, "apply_residual_connection_post_layernorm", False):
        return ("apply_residual_connection_post_layernorm=True adds the normalised stream, not the layer input, "
                "to each branch; the residual is not a sum of writes")
    return None


SPECS = (
    plain("bloom", ("bloom",), up="dense_h_to_4h", down="dense_4h_to_h", act="gelu_impl", attn="self_attention",
          out="dense", value="query_key_value", value_layout="per_head_qkv", refuse=_bloom_refuse,
          position_bias=True, notes="GELU FFN, LayerNorm, ALiBi"),
    plain("mpt", ("mpt",), mlp="ffn", up="up_proj", down="down_proj", attn="attn", out="out_proj",
          attn_norm="norm_1", ffn_norm="norm_2", value="Wqkv", value_layout="qkv",
          position_bias=_mpt_alibi, notes="GELU FFN, LayerNorm, ALiBi"),
)
