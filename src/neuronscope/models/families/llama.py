"""Llama-style decoders: ``model.layers[i].mlp.{gate,up,down}_proj``, ``act_fn``, ``self_attn.o_proj``.

Covers Llama 1-3, Mistral, Mixtral-free dense Qwen2/Qwen3 and the language models inside LLaVA, LLaVA-NeXT,
Qwen2-VL and Idefics3. FFN: ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``; pre-norm residual, RMSNorm.
"""

from neuronscope.models.spec import FamilySpec

FFN_NORM = "post_attention_layernorm"

SPECS = (
    FamilySpec(
        name="llama",
        model_types=(
            "llama", "mistral", "qwen2", "qwen3", "qwen2_vl_text", "qwen2_5_vl_text", "granite", "smollm3",
            "cohere", "starcoder2_gated", "internlm2", "deepseek_v2_dense", "yi", "ministral", "helium",
        ),
        down="mlp.down_proj",
        act="mlp.act_fn",
        up="mlp.up_proj",
        gate="mlp.gate_proj",
        attn_out="self_attn.o_proj",
        ffn_norm=FFN_NORM,
        notes="gated SiLU FFN, RMSNorm (Llama, Mistral, Qwen2, Qwen3, and the LMs inside LLaVA/Qwen2-VL/Idefics3)",
    ),
)
