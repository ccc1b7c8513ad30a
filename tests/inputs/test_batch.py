"""Batch.forward_inputs: the attention mask is left out only when no row is padded, and the forward is the same."""

from __future__ import annotations

import torch

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.inputs import Batch


def _batch(left_pad=()) -> Batch:
    inputs = random_batch(batch=3, length=6, seed=2, left_pad=left_pad)
    return Batch(inputs, ["?"] * 3, inputs["attention_mask"].sum(-1))


def test_the_mask_is_left_out_only_without_padding():
    model = tiny_text_model("llama")
    full = _batch()
    assert "attention_mask" not in full.forward_inputs() and "input_ids" in full.forward_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(**full.forward_inputs()).logits, model(**full.inputs).logits, rtol=0,
                                   atol=0)
    padded = _batch(left_pad=(0, 2, 1))
    assert padded.forward_inputs() is padded.inputs
