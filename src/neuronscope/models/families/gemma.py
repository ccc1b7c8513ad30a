"""Gemma family: gated GELU FFN, RMSNorm with a ``1 + weight`` gain (read from the module), embeddings scaled by
``sqrt(d)`` before the first layer (no effect on the accounting).

- Gemma: Llama-like norms; VaultGemma: ``pre_feedforward_layernorm`` and a logit soft-cap.
- Gemma-2 / Gemma-3: sandwich norms (``post_attention_layernorm`` after attention, ``post_feedforward_layernorm``
  after the FFN) and a final logit soft-cap. A neuron's write is read through the post-FFN norm frozen at the FFN
  output's scale (it sums to the FFN's real write).
- Gemma-4 adds, after the FFN's residual add, a per-layer-input (PLE) write and a scalar on the whole layer
  output; the FFN's write and the residual it lands on are taken at the FFN's add (site ``ffn_in``), before them.
  Its global layers have wider heads (``head_dim_of``); values may reuse the keys (``attention_k_eq_v``) and are
  normalised (``v_norm``), so attention neurons are refused there, heads work.
"""

from neuronscope.models.families.common import gated

SOFTCAP = (("softcap", "config.final_logit_softcapping"),)

SPECS = (
    gated("gemma", ("gemma",), notes="gated GELU FFN, RMSNorm with (1 + weight)"),
    gated("vaultgemma", ("vaultgemma",), ffn_norm="pre_feedforward_layernorm", logits=SOFTCAP,
          notes="Gemma with a pre-FFN norm and a logit soft-cap"),
    gated("gemma2", ("gemma2", "gemma3_text"), ffn_norm="pre_feedforward_layernorm",
          post_attn_norm="post_attention_layernorm", post_ffn_norm="post_feedforward_layernorm", logits=SOFTCAP,
          notes="gated GELU FFN with sandwich norms, logit soft-cap (Gemma-2, Gemma-3 text)"),
    gated("gemma4", ("gemma4_text", "gemma4_unified_text"), ffn_norm="pre_feedforward_layernorm",
          post_attn_norm="post_attention_layernorm", post_ffn_norm="post_feedforward_layernorm", logits=SOFTCAP,
          value=None,
          notes="Gemma-3 layout plus a per-layer-input stream and a layer scalar after the FFN; wider global heads"),
)
