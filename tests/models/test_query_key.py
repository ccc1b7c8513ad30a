"""Query/key projections per family against the states the model hands its own attention function: at position 0
the rotary embedding is the identity, so there the query and key the attention receives are the projections."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.models import get_adapter
from neuronscope.models.attention import attention_module
from neuronscope.models.query_key import query_key_projections

SEEN: dict = {}


def _spy(module, query, key, value, attention_mask, **kwargs):
    SEEN[id(module)] = (query.detach(), key.detach())
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "phi3", "qwen3", "olmo2", "gemma3_text"])
def test_projections_equal_the_attention_inputs_at_position_zero(family):
    AttentionInterface.register("query_key_spy", _spy)
    AttentionMaskInterface.register("query_key_spy", sdpa_mask)
    model = tiny_text_model(family)
    adapter = get_adapter(model)
    layer = 1
    attention = attention_module(adapter, layer)
    hidden = {}
    handle = attention.register_forward_pre_hook(
        lambda m, args, kwargs: hidden.__setitem__("x", args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True)
    before = model.config._attn_implementation
    model.set_attn_implementation("query_key_spy")
    try:
        with torch.no_grad():
            model(**random_batch(2, 5))
    finally:
        model.set_attn_implementation(before)
        handle.remove()
    query, key = SEEN[id(attention)]  # [B, H, T, d], [B, KV, T, d]
    queries, keys = query_key_projections(adapter, layer)
    with torch.no_grad():
        q, k = queries(hidden["x"][:, 0]), keys(hidden["x"][:, 0])  # [B, H, d], [B, KV, d]
    assert q.shape == (2, adapter.n_heads, adapter.head_dim) and k.shape == (2, adapter.n_kv_heads, adapter.head_dim)
    assert torch.allclose(q, query[:, :, 0], atol=1e-5), family
    assert torch.allclose(k, key[:, :, 0], atol=1e-5), family
