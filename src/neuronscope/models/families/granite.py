"""Granite and HyperCLOVA X: Llama module tree with muP multipliers read from the checkpoint.

Granite: ``x + residual_multiplier · attn``, ``x + residual_multiplier · ffn`` (the multiplier is an attribute of
each decoder layer) and ``logits = lm_head(h) / logits_scaling``. HyperCLOVA X adds sandwich norms
(``post_norm1`` after attention, ``post_norm2`` after the FFN) and *multiplies* the logits by ``logits_scaling``.
The embedding multipliers act before the first layer and do not enter the accounting.
"""

from neuronscope.models.families.common import gated

SPECS = (
    gated("granite", ("granite", "granite_swa"), ffn_scale=("layer.residual_multiplier",),
          attn_scale=("layer.residual_multiplier",), logits=(("divide", "config.logits_scaling"),),
          notes="gated FFN, residual multipliers, logits divided by logits_scaling"),
    gated("hyperclovax", ("hyperclovax",), post_attn_norm="post_norm1", post_ffn_norm="post_norm2",
          ffn_scale=("layer.residual_multiplier",), attn_scale=("layer.residual_multiplier",),
          logits=(("multiply", "config.logits_scaling"),),
          notes="gated FFN, sandwich norms, residual multipliers, logits multiplied by logits_scaling"),
)
