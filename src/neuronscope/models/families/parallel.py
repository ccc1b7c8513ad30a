"""Parallel-residual decoders: attention and FFN read the same normalised layer input and both outputs are added
to it, ``x + attn(n(x)) + ffn(n(x))``. The FFN's write therefore lands on ``x + attn(n(x))`` (no tensor of the
model holds it; it is the layer output minus the FFN output).

- Phi (phi-1/1.5/2): one ``input_layernorm``; FFN ``fc2(act(fc1(x)))``; attention output ``self_attn.dense``.
- Cohere / Cohere2 (Command-R): one bias-free ``CohereLayerNorm``; gated FFN; ``logits · logit_scale``.
- GPT-J / CodeGen: ``ln_1``; FFN ``fc_out(act(fc_in(x)))``; attention ``attn.out_proj``. CodeGen fuses q/k/v in
  a model-parallel interleaved layout, so its attention neurons are refused (heads work).
"""

from neuronscope.models.families.common import gated, plain

SPECS = (
    plain("phi", ("phi",), up="fc1", down="fc2", act="activation_fn", out="dense", ffn_norm=None,
          parallel_residual=True, notes="parallel residual, GELU FFN, LayerNorm"),
    gated("cohere", ("cohere", "cohere2"), ffn_norm=None, parallel_residual=True,
          logits=(("multiply", "model.logit_scale"),),
          notes="parallel residual, gated FFN, bias-free LayerNorm, logits times logit_scale (Command-R)"),
    plain("gptj", ("gptj",), up="fc_in", down="fc_out", attn="attn", out="out_proj", attn_norm="ln_1",
          ffn_norm=None, parallel_residual=True, notes="parallel residual, GELU FFN (GPT-J)"),
    plain("codegen", ("codegen",), up="fc_in", down="fc_out", attn="attn", out="out_proj", attn_norm="ln_1",
          ffn_norm=None, parallel_residual=True, value=None,
          notes="parallel residual, GELU FFN, interleaved fused q/k/v (heads only)"),
)
