"""Phi-3: a fused ``gate_up_proj`` whose output is ``[gate | up]``; ``down_proj``; ``self_attn.o_proj``."""

from neuronscope.models.spec import FamilySpec

FFN_NORM = "post_attention_layernorm"

SPECS = (
    FamilySpec(
        name="phi3",
        model_types=("phi3", "phimoe_dense"),
        down="mlp.down_proj",
        act="mlp.activation_fn",
        fused_gate_up="mlp.gate_up_proj",
        attn_out="self_attn.o_proj",
        ffn_norm=FFN_NORM,
        notes="fused gate/up projection, gated SiLU FFN",
    ),
)
