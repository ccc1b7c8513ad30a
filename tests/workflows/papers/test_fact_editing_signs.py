"""The signed closed-form shift pushes towards the new token even for a neuron that fires negatively."""

from __future__ import annotations

import torch

from neuronscope.edit.weights import ValueVectorEdit
from neuronscope.inputs import encode_prompts
from neuronscope.models.adapter import get_adapter
from neuronscope.trace import capture
from neuronscope.workflows.papers.fact_editing import _activation_signs


def _margin(model, batch, new, old):
    with torch.no_grad():
        logits = model(**batch.inputs).logits[0, -1].double()
    return float(logits[new] - logits[old])


def test_signed_shift_moves_towards_the_new_token_for_negative_and_positive_neurons(stories260k):
    model, tokenizer = stories260k.model, stories260k.tokenizer
    adapter = get_adapter(model)
    batch = encode_prompts(tokenizer, ["Once upon a time"], model=model)
    last = adapter.n_layers - 1
    all_neurons = torch.stack([torch.full((adapter.d_ff,), last), torch.arange(adapter.d_ff)], dim=1)
    signs = _activation_signs(model, batch, all_neurons)
    assert (signs < 0).any() and (signs > 0).any()  # a gated FFN fires both ways
    with torch.no_grad(), capture(model, "neuron", layers=[last], positions="last") as acts:
        model(**batch.inputs)
    values = acts.stack().reshape(-1)
    assert torch.equal(signs, torch.where(values < 0, -1.0, 1.0))
    with torch.no_grad():
        ranking = model(**batch.inputs).logits[0, -1].argsort(descending=True)
    old, new = int(ranking[0]), int(ranking[10])  # trained tokens (not unused byte tokens)
    before = _margin(model, batch, new, old)
    for wanted in (-1.0, 1.0):
        index = int(values.argmin() if wanted < 0 else values.argmax())
        neuron = all_neurons[index:index + 1]
        signed = ValueVectorEdit.token_shift(model, neuron, old, new, 0.5, signs=signs[index:index + 1])
        unsigned = ValueVectorEdit.token_shift(model, neuron, old, new, 0.5, signs=torch.ones(1))
        with signed.applied(model):
            after_signed = _margin(model, batch, new, old)
        with unsigned.applied(model):
            after_unsigned = _margin(model, batch, new, old)
        assert after_signed > before
        # the unsigned shift goes the wrong way exactly when the neuron fires negatively
        assert (after_unsigned < before) == (wanted < 0)
    assert _margin(model, batch, new, old) == before  # edits reverted
