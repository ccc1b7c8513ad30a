"""Shared by the integrated-gradients path tests: float64 tiny models, one-row batches, tolerances."""

from __future__ import annotations

import torch

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.inputs import Batch

EXACT = dict(rtol=1e-7, atol=1e-13)
EAGER = dict(rtol=1e-5, atol=1e-10)  # eager attention's softmax runs in float32


def float64_model(family: str = "llama", attention: str = "sdpa"):
    model = tiny_text_model(family, dtype=torch.float64)
    model.set_attn_implementation(attention)
    return model


def one_row_batch(length: int, seed: int) -> Batch:
    inputs = random_batch(batch=1, length=length, seed=seed)
    mask = inputs["attention_mask"]
    return Batch({**inputs, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}, [""], mask.sum(-1))
