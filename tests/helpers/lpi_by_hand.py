"""LPI of FFN neurons by brute force on a Llama-like model: plain hooks on the stock modules, the frozen final norm
written out by hand (an oracle independent of neuronscope.attribute)."""

from __future__ import annotations

import torch


def hand_sigma(model, batch) -> torch.Tensor:
    """σ [B] of the final RMSNorm at the last position, from a plain hook on the stock norm module."""
    seen = {}
    norm = model.model.norm
    hook = norm.register_forward_pre_hook(lambda module, args: seen.__setitem__("x", args[0].detach()))
    try:
        with torch.no_grad():
            model(**batch.inputs)
    finally:
        hook.remove()
    return (seen["x"][:, -1].pow(2).mean(-1) + norm.variance_epsilon).sqrt()


def hand_lpi(model, batch, tokens, layer, sigma) -> torch.Tensor:
    """LPI [B, d_ff] of every neuron of ``layer`` at the last position by brute force: the FFN's input residual and
    the down_proj input read by plain hooks, each vector's readout ``W_U (g ⊙ (r + a_i w_i) / σ)`` in full."""
    block, seen = model.model.layers[layer], {}
    hooks = [block.post_attention_layernorm.register_forward_pre_hook(lambda m, a: seen.__setitem__("r", a[0])),
             block.mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("a", a[0]))]
    try:
        with torch.no_grad():
            model(**batch.inputs)
    finally:
        for hook in hooks:
            hook.remove()
    gain, unembedding, values = model.model.norm.weight, model.lm_head.weight, block.mlp.down_proj.weight.T
    rows = []
    with torch.no_grad():
        for b, token in enumerate(tokens):
            residual, coefficients = seen["r"][b, -1], seen["a"][b, -1]
            base = ((gain * residual / sigma[b]) @ unembedding.T).log_softmax(-1)[token]
            written = residual[None] + coefficients[:, None] * values  # [d_ff, d]
            rows.append(((gain * written / sigma[b]) @ unembedding.T).log_softmax(-1)[:, token] - base)
    return torch.stack(rows)
