"""A cached last step under an intervention equals a full forward under the same intervention."""

from __future__ import annotations

import contextlib

import pytest
import torch

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.trace.attention_edit import AttentionReweighting, edited_attention
from neuronscope.trace.intervene import ablate_heads, intervene
from neuronscope.trace.last_step import last_position_logits


def _batch(rows: int = 5) -> Batch:
    inputs = random_batch(rows, 9, seed=2, left_pad=(3, 0, 1, 2, 4))  # chunks of 2 rows cut 0, 1 and 4 columns
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return Batch(inputs, ["x"] * rows, inputs["attention_mask"].sum(-1))


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "phi3"])
def test_cached_last_steps_equal_full_forwards(family):
    model = tiny_text_model(family)
    batch = _batch()
    heads = [(1, 2), (0, 0)]
    plan = AttentionReweighting(1, [1, 3], torch.tensor([[4, 6]] * 5), torch.tensor([[3.0, 0.25]] * 5))
    shifts = []
    conditions = {
        "clean": lambda chunk: shifts.append(chunk.shift) or contextlib.nullcontext(),
        "ablated": lambda chunk: intervene(model, ablate_heads(model, heads, positions="last")),
        "reweighted": lambda chunk: edited_attention(model, [plan.select(chunk.rows, chunk.shift)]),
    }
    tokens = torch.tensor([5, 9, 33])
    fast = last_position_logits(model, batch, conditions, token_ids=tokens, chunk_size=2)
    assert shifts == [0, 1, 4]
    logs = last_position_logits(model, batch, dict(reversed(list(conditions.items()))), log_softmax=True,
                                chunk_size=5)
    with torch.no_grad():
        full = {"clean": model(**batch.inputs).logits[:, -1]}
        with intervene(model, ablate_heads(model, heads, positions="last")):
            full["ablated"] = model(**batch.inputs).logits[:, -1]
        with edited_attention(model, [plan]):
            full["reweighted"] = model(**batch.inputs).logits[:, -1]
    for name, logits in full.items():
        assert torch.allclose(fast[name], logits[:, tokens], atol=2e-5), (family, name)
        assert torch.allclose(logs[name], logits.log_softmax(-1), atol=2e-5), (family, name)
    assert not torch.allclose(full["clean"], full["ablated"]) and not torch.allclose(full["clean"], full["reweighted"])


def test_short_prompts_are_refused():
    model = tiny_text_model("llama")
    inputs = random_batch(2, 1)
    with pytest.raises(NeuronscopeError, match="at least two tokens"):
        last_position_logits(model, Batch(inputs, ["x", "y"], inputs["attention_mask"].sum(-1)),
                             {"clean": lambda chunk: contextlib.nullcontext()})
