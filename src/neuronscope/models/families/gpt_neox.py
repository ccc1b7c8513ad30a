"""GPT-NeoX / Pythia: ``gpt_neox.layers[i].mlp.{dense_h_to_4h, act, dense_4h_to_h}``, ``attention.dense``.

Parallel residual by default (``use_parallel_residual``): attention and FFN both read the layer input.
"""

from neuronscope.models.spec import FamilySpec

SPECS = (
    FamilySpec(
        name="gpt_neox",
        model_types=("gpt_neox",),
        down="mlp.dense_4h_to_h",
        act="mlp.act",
        pre="mlp.dense_h_to_4h",
        attn_out="attention.dense",
        ffn_norm="post_attention_layernorm",
        parallel_residual=True,
        notes="GELU FFN, parallel residual, LayerNorm with bias",
    ),
)
