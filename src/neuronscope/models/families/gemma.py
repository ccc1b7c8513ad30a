"""Gemma, Gemma-2, Gemma-3 (text): Llama-like gated FFN, RMSNorm with a ``1 + weight`` gain.

Gemma-2/3 normalise the FFN output (``post_feedforward_layernorm``) before adding it to the residual, so a neuron's
write into the residual is ``norm(ffn_out) - norm(ffn_out - a_i w_i)``, not ``a_i w_i``; and they soft-cap the
final logits.
"""

from neuronscope.models.spec import FamilySpec

FFN_NORM = "pre_feedforward_layernorm"

SPECS = (
    FamilySpec(
        name="gemma",
        model_types=("gemma",),
        down="mlp.down_proj",
        act="mlp.act_fn",
        up="mlp.up_proj",
        gate="mlp.gate_proj",
        attn_out="self_attn.o_proj",
        ffn_norm="post_attention_layernorm",
        notes="gated GELU FFN, RMSNorm with (1 + weight)",
    ),
    FamilySpec(
        name="gemma2",
        model_types=("gemma2", "gemma3_text", "gemma3"),
        down="mlp.down_proj",
        act="mlp.act_fn",
        up="mlp.up_proj",
        gate="mlp.gate_proj",
        attn_out="self_attn.o_proj",
        ffn_norm=FFN_NORM,
        post_ffn_norm="post_feedforward_layernorm",
        notes="gated GELU FFN with a post-FFN RMSNorm, logit soft-capping (Gemma-2, Gemma-3 text)",
    ),
)
