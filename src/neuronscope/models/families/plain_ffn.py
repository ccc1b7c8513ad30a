"""Llama-like decoders with a non-gated FFN ``down_proj(act(up_proj(x)))``: Arcee, Nemotron, Jais-2 (squared
ReLU), Apertus (xIELU; norms named ``attention_layernorm`` / ``feedforward_layernorm``); and NanoChat
(``fc2(relu²(fc1(x)))``, QK norms, logit soft-cap). Nemotron's ``LayerNorm1P`` (``1 + weight``) is read from the
module like any LayerNorm."""

from neuronscope.models.families.common import plain

SPECS = (
    plain("arcee", ("arcee", "nemotron", "jais2"), up="up_proj", down="down_proj", act="act_fn",
          notes="non-gated FFN (squared ReLU), Llama or LayerNorm(1P) norms"),
    plain("apertus", ("apertus", "apertus1p5_text"), up="up_proj", down="down_proj", act="act_fn", attn_norm="attention_layernorm",
          ffn_norm="feedforward_layernorm", notes="non-gated xIELU FFN, QK norms"),
    plain("nanochat", ("nanochat",), up="fc1", down="fc2", act="activation_fn",
          logits=(("softcap", "config.final_logit_softcapping"),), notes="squared-ReLU FFN, logit soft-cap"),
)
