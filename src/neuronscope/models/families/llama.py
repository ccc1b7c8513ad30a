"""Llama-style decoders: ``layers[i].mlp.{gate,up,down}_proj`` + ``act_fn``, ``self_attn.{v,o}_proj``, RMSNorm
``input_layernorm`` before attention and ``post_attention_layernorm`` before the FFN, plain residual adds.

FFN: ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``. Every model type below has the same module tree and the same
residual (checked on a tiny config of each by ``tests/models/test_accounting.py``); they differ in attention
details that do not touch the accounting (QK norms, NoPE layers, sliding windows, differential attention, BitNet's
sub-norms inside the FFN and attention, whose outputs are still the sites). MLA attention (MiniCPM3, Youtu) has
no single value projection: attention neurons are refused there, heads work. MiniCPM3 scales each branch by
``scale_depth / sqrt(L)`` (a layer attribute) and divides the final hidden state by ``logits_scaling`` before
the unembedding (the same as dividing the logits: no unembedding bias).
"""

from neuronscope.models.families.common import gated

SPECS = (
    gated("llama", (
        "llama", "mistral", "qwen2", "qwen3", "qwen2_vl_text", "qwen2_5_vl_text", "qwen3_vl_text", "smollm3",
        "seed_oss", "helium", "ministral", "ministral3", "ernie4_5", "hunyuan_v1_dense", "internlm3", "exaone",
        "iquestcoder", "cwm", "diffllama", "bitnet", "flint",
    ), notes="gated FFN, RMSNorm, plain residual (Llama, Mistral, Qwen2/3, SmolLM3, Seed-OSS, ...)"),
    gated("minicpm3", ("minicpm3",), value=None, ffn_scale=("layer.residual_scale",),
          attn_scale=("layer.residual_scale",), logits=(("divide", "config.logits_scaling"),),
          notes="Llama-like with MLA attention (heads only), each branch scaled, final hidden / logits_scaling"),
    gated("youtu", ("youtu",), value=None, notes="Llama-like with MLA attention (no value projection: heads only)"),
)
