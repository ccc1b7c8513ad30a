"""An oracle shared by the total-effect tests: log P(token) at the last position with one FFN neuron scaled there,
by a forward pre-hook on the stock ``down_proj`` (independent of neuronscope's sites and interventions)."""

from __future__ import annotations

import torch


def log_p_with_neuron_scaled(model, inputs: dict, token: int, neuron: tuple[int, int] | None = None,
                             factor: float = 1.0) -> float:
    """``log softmax(logits[0, -1])[token]`` of ``model(**inputs)`` (one row), neuron ``(layer, index)`` scaled by
    ``factor`` at the last position (None: unchanged)."""
    handle = None
    if neuron is not None:
        layer, index = neuron

        def scale(module, args):
            hidden = args[0].clone()
            hidden[:, -1, index] *= factor
            return (hidden,)

        handle = model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(scale)
    try:
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
    finally:
        if handle is not None:
            handle.remove()
    return float(logits.double().log_softmax(-1)[token])
