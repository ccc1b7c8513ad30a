"""Hybrid decoders whose FFN layers sit between (or beside) non-attention token mixers. Neurons are the dense FFNs'
as everywhere; the mixers are named per layer (``adapter.mixers``), heads exist only in softmax-attention layers.
Mixture-of-experts FFN layers (Jamba's, Nemotron-H's, Qwen3-Next's default) are refused as MoE.

- Qwen3.5 (text) / Qwen3-Next: Gated DeltaNet (``linear_attn``) or gated softmax attention (``self_attn``,
  output gated before ``o_proj``: heads are exact, attention neurons refused by their check), then a gated FFN.
- Jamba: Mamba (``mamba``) or attention (``self_attn``), then ``feed_forward`` (dense or MoE by layer).
- Falcon-H1: Mamba-2 and attention *in parallel* on the same normalised input (each output scaled by
  ``ssm_out_multiplier`` / ``attn_out_multiplier``), then ``feed_forward`` whose output is scaled by its
  ``down_multiplier``; logits times ``lm_head_multiplier``.
- Nemotron-H: each layer holds one ``mixer``: Mamba-2, attention, an FFN (``mixer.down_proj``) or an MoE.
- LFM2: short convolution (``conv``) or attention (``self_attn.out_proj``), then ``feed_forward.w2(silu(w1) * w3)``;
  its final norm is named ``embedding_norm``. LFM3 adds post norms after the mixer and the FFN.
"""

from neuronscope.models.families.common import gated, mixer_by_attribute, mixer_by_module, plain

_QWEN_MIXERS = mixer_by_module({"self_attn": "attention", "linear_attn": "linear_attention"})
_LFM_MIXERS = mixer_by_module({"self_attn": "attention", "conv": "short_conv"})

SPECS = (
    gated("qwen3_5", ("qwen3_5_text", "qwen3_next"), mixer=_QWEN_MIXERS,
          notes="Gated DeltaNet / gated attention layers, each followed by a dense FFN"),
    gated("jamba", ("jamba",), mlp="feed_forward", ffn_norm="pre_ff_layernorm",
          mixer=mixer_by_module({"self_attn": "attention", "mamba": "mamba"}),
          notes="Mamba / attention layers, each followed by a dense FFN (MoE layers refused)"),
    gated("falcon_h1", ("falcon_h1",), mlp="feed_forward", ffn_norm="pre_ff_layernorm",
          mixer=mixer_by_module({"self_attn": "attention", "mamba": "mamba"}),
          ffn_scale=("layer.feed_forward.down_multiplier",), attn_scale=("layer.attn_out_multiplier",),
          logits=(("multiply", "model.model.lm_head_multiplier"),),
          notes="Mamba-2 and attention in parallel, then a dense FFN; muP multipliers read from the model"),
    plain("nemotron_h", ("nemotron_h",), mlp="mixer", up="up_proj", down="down_proj", act="act_fn", attn="mixer",
          attn_norm="norm", ffn_norm="norm",
          mixer=mixer_by_attribute("block_type", {"linear_attention": "mamba", "full_attention": "attention",
                                                  "mlp": "none", "moe": "none"}),
          notes="one mixer per layer: Mamba-2, attention or a dense FFN (MoE layers refused)"),
    gated("lfm2", ("lfm2",), mlp="feed_forward", gate="w1", up="w3", down="w2", act=None, out="out_proj",
          attn_norm="operator_norm", ffn_norm="ffn_norm", mixer=_LFM_MIXERS, final_norm="embedding_norm",
          notes="short-convolution / attention layers, each followed by a gated FFN"),
    gated("lfm3", ("lfm3",), mlp="feed_forward", gate="w1", up="w3", down="w2", act=None,
          attn_norm="operator_norm", ffn_norm="ffn_norm", post_attn_norm="post_operator_norm",
          post_ffn_norm="post_ffn_norm", mixer=_LFM_MIXERS, final_norm="embedding_norm",
          notes="LFM2 with post norms after the mixer and the FFN"),
)
