"""Model types the adapter refuses, grouped by why (``neuronscope models`` prints them with the reason).

Every causal-LM and image-text-to-text model type of the installed transformers is either adapted by a spec (and
checked on a tiny config) or listed here; ``tests/models/test_catalogue.py`` fails when a new release adds one that
is neither.
"""

from neuronscope.models.spec import Refusal

MOE = "its FFN layers are mixtures of experts; MoE neurons are a separate issue (#15)"

REFUSALS: tuple[Refusal, ...] = (
    Refusal(("opt",), "layout", "OPT keeps fc1/fc2 directly in the decoder layer (no FFN module) and can place its "
            "norms after the residual add (do_layer_norm_before=False); no spec yet"),
    Refusal(("mamba", "mamba2", "falcon_mamba", "rwkv", "xlstm"), "state-space",
            "no FFN layers: the whole model is a recurrent / state-space mixer, so there are no FFN neurons to score"),
)
