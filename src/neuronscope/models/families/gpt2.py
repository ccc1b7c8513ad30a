"""GPT-2-style FFNs ``c_proj(act(c_fc(x)))``: GPT-2 (``Conv1D`` weights ``[in, out]``, fused ``attn.c_attn``),
GPT-BigCode / StarCoder (``nn.Linear``; multi-query ``c_attn`` = ``[q | k | v]`` with one key/value head) and
StarCoder2 (separate ``self_attn.{v,o}_proj``, LayerNorm ``input_layernorm`` / ``post_attention_layernorm``).
The neuron site is the post-GELU input of ``c_proj``; ``pre`` the ``c_fc`` output (EleutherAI's site)."""

from neuronscope.models.families.common import plain

SPECS = (
    plain("gpt2", ("gpt2", "gpt-sw3"), up="c_fc", down="c_proj", attn="attn", out="c_proj", attn_norm="ln_1",
          ffn_norm="ln_2", value="c_attn", value_layout="c_attn", conv1d=True,
          notes="GELU FFN, LayerNorm with bias, Conv1D weights"),
    plain("gpt_bigcode", ("gpt_bigcode",), up="c_fc", down="c_proj", attn="attn", out="c_proj", attn_norm="ln_1",
          ffn_norm="ln_2", value="c_attn", value_layout="qkv", notes="GELU FFN, multi-query attention (StarCoder)"),
    plain("starcoder2", ("starcoder2",), up="c_fc", down="c_proj",
          notes="GELU FFN, LayerNorm, grouped-query attention"),
)
