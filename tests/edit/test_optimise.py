"""Optimised edit: the training hook equals the applied weight edit; promote/demote goals are met; locality."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.edit.optimise import _add_delta_hooks, optimise_edit
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import token_targets
from neuronscope.models import get_adapter

NEURONS = torch.tensor([[0, 1], [0, 5], [1, 2], [1, 9], [1, 11]])


def _batch(seed):
    inputs = random_batch(batch=2, length=5, seed=seed)
    return Batch(inputs, ["?", "?"], inputs["attention_mask"].sum(-1))


def test_hooked_deltas_equal_the_weight_edit():
    model = tiny_text_model("llama", dtype=torch.float64)
    adapter = get_adapter(model)
    deltas = torch.randn(len(NEURONS), adapter.d_model, dtype=torch.float32)
    batch = _batch(1)
    handles = _add_delta_hooks(adapter, NEURONS, deltas)
    with torch.no_grad():
        hooked = model(**batch.inputs).logits
    for handle in handles:
        handle.remove()
    from neuronscope.edit.weights import ValueVectorEdit

    with torch.no_grad(), ValueVectorEdit.from_deltas(model, NEURONS, deltas, "test").applied(model):
        edited = model(**batch.inputs).logits
    torch.testing.assert_close(hooked, edited, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("goal", ["promote", "demote"])
def test_goal_is_met_and_unrelated_prompts_move_little(goal):
    model = tiny_text_model("llama")
    batch, unrelated = _batch(2), _batch(3)
    with torch.no_grad():
        logits = model(**batch.inputs).logits[:, -1]
    target = logits.argmin(-1) if goal == "promote" else logits.argmax(-1)
    targets = token_targets(batch, target)
    edit = optimise_edit(model, NEURONS, batch, targets, goal=goal, unrelated=unrelated, lr=0.1, steps=300,
                         demote_below=0.05)
    assert edit.params["stopped"] == "goal met", edit.params
    with torch.no_grad(), edit.applied(model):
        after = model(**batch.inputs).logits[:, -1].softmax(-1)
    picked = after[torch.arange(2), target]
    if goal == "promote":
        assert torch.equal(after.argmax(-1), target)
    else:
        assert bool((picked < 0.05).all())
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was


def test_bad_settings_are_refused():
    model = tiny_text_model("llama")
    batch = _batch(1)
    targets = token_targets(batch, 3)
    with pytest.raises(NeuronscopeError, match="finite"):
        optimise_edit(model, NEURONS, batch, targets, lr=float("nan"))
    with pytest.raises(NeuronscopeError, match="goal"):
        optimise_edit(model, NEURONS, batch, targets, goal="maybe")
