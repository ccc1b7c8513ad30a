"""OLMo family. OLMo: Llama layout with a parameter-free LayerNorm (read from the module). OLMo-2 / OLMo-3 /
EXAONE-4: no norm *before* attention or FFN; RMSNorms *after* them (``post_attention_layernorm``,
``post_feedforward_layernorm``), so the FFN reads the residual directly and its write is read through the post norm
frozen at the FFN output's scale."""

from neuronscope.models.families.common import gated

SPECS = (
    gated("olmo", ("olmo",), notes="Llama layout, parameter-free LayerNorm"),
    gated("olmo2", ("olmo2", "olmo3", "exaone4"), attn_norm=None, ffn_norm=None,
          post_attn_norm="post_attention_layernorm", post_ffn_norm="post_feedforward_layernorm",
          notes="gated SiLU FFN with post-attention and post-FFN RMSNorms, no pre-norms (OLMo-2/3, EXAONE-4)"),
)
