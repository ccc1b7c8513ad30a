"""GPT-NeoX / Pythia, StableLM, Persimmon and Falcon: ``dense_h_to_4h`` / ``dense_4h_to_h`` FFNs (StableLM: gated),
LayerNorm with bias; the checkpoint decides between a parallel and a sequential residual.

- GPT-NeoX: ``use_parallel_residual`` (default True); fused ``query_key_value`` laid out per head ``[q | k | v]``.
- StableLM: ``use_parallel_residual`` (default False; StableLM-2-12B uses True); ``self_attn.v_proj``.
- Persimmon: sequential; fused ``query_key_value`` per head, QK LayerNorms (values untouched).
- Falcon: ``parallel_attn`` or ``new_decoder_architecture`` make it parallel (one ``input_layernorm``, or
  ``ln_attn`` / ``ln_mlp``); otherwise sequential with ``post_attention_layernorm``. Its fused
  ``query_key_value`` layout depends on the variant, so attention neurons are refused (heads work).
"""

from neuronscope.models.families.common import gated, plain


def _neox_parallel(config) -> bool:
    return bool(getattr(config, "use_parallel_residual", True))


def _falcon_parallel(config) -> bool:
    return bool(getattr(config, "new_decoder_architecture", False) or getattr(config, "parallel_attn", False))


SPECS = (
    plain("gpt_neox", ("gpt_neox",), up="dense_h_to_4h", down="dense_4h_to_h", attn="attention", out="dense",
          parallel_residual=_neox_parallel, value="query_key_value", value_layout="per_head_qkv",
          notes="GELU FFN, parallel residual (use_parallel_residual), LayerNorm with bias"),
    gated("stablelm", ("stablelm",), parallel_residual=lambda c: bool(getattr(c, "use_parallel_residual", False)),
          notes="gated FFN, LayerNorm, parallel or sequential residual (use_parallel_residual)"),
    plain("persimmon", ("persimmon",), up="dense_h_to_4h", down="dense_4h_to_h", out="dense",
          value="query_key_value", value_layout="per_head_qkv", notes="squared-ReLU FFN, LayerNorm, QK norms"),
    plain("falcon", ("falcon",), up="dense_h_to_4h", down="dense_4h_to_h", attn="self_attention", out="dense",
          attn_norm="ln_attn|input_layernorm", parallel_residual=_falcon_parallel, value=None,
          position_bias=lambda config: bool(getattr(config, "alibi", False)),
          notes="GELU FFN, parallel (parallel_attn / new_decoder_architecture) or sequential residual"),
)
