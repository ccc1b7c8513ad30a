"""MoE families: the adapter resolves every covered family (MoE and dense layers as the config says), the routing
rules return exactly what the stock routers return, unsupported MoE models get an error naming the file to add
them in, and the neuron layout converts rows and flat ids both ways."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from helpers.tiny_moe import CONFIGS, MOE_FAMILIES, tiny_moe_model
from neuronscope.errors import InputError, UnsupportedModelError
from neuronscope.models import get_adapter
from neuronscope.models.moe import NeuronLayout, route
from neuronscope.trace import resolve_site

# (moe layers, dense layers, n_experts, shared widths) per tiny config, written from the configs by hand
EXPECTED = {
    "mixtral": ([0, 1], [], 4, []), "qwen2_moe": ([0, 1], [], 4, [20]), "qwen3_moe": ([0, 1], [], 4, []),
    "qwen3_moe_dense": ([1], [0], 4, []), "qwen3_5_moe": ([0, 1], [], 4, [20]), "olmoe": ([0, 1], [], 4, []),
    "deepseek_v2": ([1], [0], 8, [12]), "deepseek_v3": ([1], [0], 8, [12]), "glm4_moe": ([1], [0], 8, [12]),
    "gpt_oss": ([0, 1], [], 4, []), "granitemoe": ([0, 1], [], 4, []), "phimoe": ([0, 1], [], 4, []),
    "llama4_text": ([1], [0], 4, [12]),
}


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_adapter_resolves_moe_and_dense_layers(family):
    adapter = get_adapter(tiny_moe_model(family))
    moe_layers, dense_layers, n_experts, shared = EXPECTED[family]
    assert sorted(adapter.moe.layers) == moe_layers and sorted(adapter.moe.dense) == dense_layers
    layer = adapter.moe.layers[moe_layers[0]]
    assert layer.n_experts == n_experts and list(layer.shared_widths) == shared and layer.width == 12
    assert adapter.describe()["moe"]["moe_layers"] == moe_layers
    n = sum(24 for _ in dense_layers) + len(moe_layers) * (n_experts * 12 + sum(shared))
    assert adapter.moe.layout.n_neurons == n
    if dense_layers:  # dense layers keep today's neurons
        assert adapter.value_vectors(dense_layers[0]).shape == (24, 16)
    with pytest.raises(Exception, match="mixture-of-experts layer"):
        resolve_site(adapter, "neuron", moe_layers[0])


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_routing_rule_equals_stock_router(family):
    adapter = get_adapter(tiny_moe_model(family))
    for moe in adapter.moe.layers.values():
        hidden = 3.0 * torch.randn(11, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(moe.layer))
        out = moe.router(hidden)
        if family == "llama4_text":
            scores, logits = out
            weights, experts = route("llama4", moe.router, logits, None, hidden.dtype)
            assert torch.equal(torch.zeros_like(scores).scatter(1, experts, weights), scores)
        else:
            logits, stock_weights, stock_experts = out[0], out[1], out[2]
            weights, experts = route(moe.family.routing, moe.router, logits, None, hidden.dtype)
            assert torch.equal(experts, stock_experts) and torch.equal(weights, stock_weights)
            assert weights.dtype == stock_weights.dtype


def test_qwen3_moe_mlp_only_layers_and_sparse_step():
    config = CONFIGS["qwen3_moe"]()
    config.num_hidden_layers, config.decoder_sparse_step, config.mlp_only_layers = 4, 2, [3]
    adapter = get_adapter(T.AutoModelForCausalLM.from_config(config))
    assert sorted(adapter.moe.layers) == [1] and sorted(adapter.moe.dense) == [0, 2, 3]


def test_unsupported_moe_family_names_the_file_to_add_it_in():
    config = T.MiniMaxConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                             num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, intermediate_size=12)
    with pytest.raises(UnsupportedModelError, match="mixture-of-experts family.*src/neuronscope/models/moe/families.py"):
        get_adapter(T.AutoModelForCausalLM.from_config(config))


def test_layout_rows_and_flat_ids_round_trip():
    layout = NeuronLayout.from_units([(1, 0, 12), (0, -1, 24), (1, 1, 12), (1, 2, 20)], {1: 2})
    flat = torch.arange(layout.n_neurons)
    rows = layout.rows(flat)
    assert torch.equal(layout.flat(rows), flat)
    assert rows[:24, 1].eq(-1).all() and rows[24:36, 1].eq(0).all() and rows[-20:, 1].eq(2).all()
    assert layout.is_shared(1, 2) and not layout.is_shared(1, 1)
    assert layout.block(1, 1) == slice(36, 48) and layout.layer_block(1) == slice(24, 68)
    assert NeuronLayout.from_dict(layout.as_dict()) == layout
    with pytest.raises(InputError, match="not in this model"):
        layout.flat(torch.tensor([[1, 0, 12]]))
    with pytest.raises(InputError, match=r"\[n, 3\]"):
        layout.check(torch.tensor([[1, 0]]))
