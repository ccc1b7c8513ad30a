"""OLMo-2: Llama-like gated FFN, but norms *after* attention and FFN (``post_feedforward_layernorm``)."""

from neuronscope.models.spec import FamilySpec

FFN_NORM = None  # the FFN reads the residual directly; its norm comes after it

SPECS = (
    FamilySpec(
        name="olmo2",
        model_types=("olmo2", "olmo3"),
        down="mlp.down_proj",
        act="mlp.act_fn",
        up="mlp.up_proj",
        gate="mlp.gate_proj",
        attn_out="self_attn.o_proj",
        ffn_norm=FFN_NORM,
        post_ffn_norm="post_feedforward_layernorm",
        notes="gated SiLU FFN with a post-FFN RMSNorm",
    ),
)
