"""Fused ``[gate | up]`` projections: Phi-3 (``mlp.gate_up_proj``, ``act_fn``... named ``activation_fn``), GLM
(Llama norms) and GLM-4 (sandwich norms ``post_self_attn_layernorm`` / ``post_mlp_layernorm``)."""

from neuronscope.models.families.common import fused

SPECS = (
    fused("phi3", ("phi3",), notes="fused gate/up projection, gated SiLU FFN"),
    fused("glm", ("glm",), notes="fused gate/up projection, Llama norms"),
    fused("glm4", ("glm4",), post_attn_norm="post_self_attn_layernorm", post_ffn_norm="post_mlp_layernorm",
          notes="fused gate/up projection with sandwich norms"),
)
