"""Every frozen-norm scorer checks, on its own forward, that the model's logits are the adapter's readout of the
last residual; a model whose readout differs is refused in one line, whether the check runs at once
(contribution with final_norm) or is queued on the device and read back with the scores (LPI)."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.attribute.contribution import contribution
from neuronscope.attribute.log_probability_increase import log_probability_increase
from neuronscope.errors import UnsupportedModelError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models import get_adapter


def _inputs() -> tuple[Batch, TargetSet]:
    inputs = random_batch(batch=2, length=6)
    batch = Batch(inputs, ["?", "?"], inputs["attention_mask"].sum(-1))
    return batch, TargetSet(torch.tensor([[5], [9]]), torch.tensor([[5], [4]]), torch.ones(2, 1, dtype=torch.bool))


def _wrong_readout(model):
    """The adapter believes in a readout that is not the model's (twice its logits); returns the undo."""
    adapter = get_adapter(model)
    right = adapter.logits_from_residual
    adapter.logits_from_residual = lambda residual: 2.0 * right(residual)
    return lambda: setattr(adapter, "logits_from_residual", right)


@pytest.mark.parametrize("scorer", ["contribution", "contribution_top_k", "lpi"])
def test_a_readout_that_is_not_the_models_is_refused(scorer: str) -> None:
    model = tiny_text_model("llama")
    batch, targets = _inputs()
    run = {"contribution": lambda: contribution(model, batch, targets, final_norm=True),
           "contribution_top_k": lambda: contribution(model, batch, targets, final_norm=True, top_k=5),
           "lpi": lambda: log_probability_increase(model, batch, targets, layers=[0])}[scorer]
    run()  # the real readout passes
    undo = _wrong_readout(model)
    if scorer == "contribution_top_k":  # the device-selected path reads no logits: nothing to compare
        run()
        return
    with pytest.raises(UnsupportedModelError) as error:
        run()
    assert "\n" not in str(error.value) and "not the readout of its last residual" in str(error.value)
    undo()
    run()  # the failed check is not left queued for a later call
