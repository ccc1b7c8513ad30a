"""GPT-2: ``transformer.h[i].mlp.{c_fc, act, c_proj}``, ``attn.c_proj``; ``Conv1D`` weights are ``[in, out]``.

FFN: ``c_proj(gelu(c_fc(x)))``; the neuron site is the post-GELU input of ``c_proj``, ``pre`` the ``c_fc`` output
(the site EleutherAI's knowledge-neurons hooks). LayerNorm with bias.
"""

from neuronscope.models.spec import FamilySpec

SPECS = (
    FamilySpec(
        name="gpt2",
        model_types=("gpt2",),
        down="mlp.c_proj",
        act="mlp.act",
        pre="mlp.c_fc",
        attn_out="attn.c_proj",
        ffn_norm="ln_2",
        conv1d=True,
        notes="GELU FFN, LayerNorm with bias, Conv1D weights",
    ),
)
