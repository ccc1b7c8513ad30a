"""Router statistics against counts made by hand from the stock router's output, and expert neurons' top tokens
against their value vectors read through the unembedding by hand."""

from __future__ import annotations

import torch

from helpers.tiny_moe import random_ids, tiny_moe_model
from neuronscope.attribute.moe_router import RouterStatistics, merge_router_statistics, routing_statistics
from neuronscope.explain.top_tokens import top_tokens
from neuronscope.inputs import Batch
from neuronscope.models import get_adapter


def test_routing_statistics_count_what_the_router_chose(tmp_path):
    model = tiny_moe_model("qwen3_moe")
    adapter = get_adapter(model)
    inputs = random_ids(2, 6, left_pad=(0, 2))
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    batch = Batch(inputs, ["?", "?"], inputs["attention_mask"].sum(-1))
    outputs = {}
    router = adapter.moe.layers[1].router
    handle = router.register_forward_hook(lambda m, a, out: outputs.__setitem__("r", out))
    stats = routing_statistics(model, batch, positions="all")
    handle.remove()
    logits, weights, experts = outputs["r"]
    real = inputs["attention_mask"].reshape(-1).bool()
    counts = torch.bincount(experts[real].reshape(-1), minlength=4).double()
    assert stats.n_tokens == 10 and torch.equal(stats.counts[1], counts)
    torch.testing.assert_close(stats.mean_score[1], logits[real].softmax(-1).mean(0).double())
    routed_weight = torch.zeros(4, dtype=torch.float64).index_add(0, experts[real].reshape(-1),
                                                                  weights[real].reshape(-1).double())
    torch.testing.assert_close(stats.mean_weight[1], routed_weight / counts.clamp(min=1))
    assert stats.top_experts(1, 1)[0][0] == int(counts.argmax())
    stats.save(tmp_path / "routing")
    assert torch.equal(RouterStatistics.load(tmp_path / "routing").counts, stats.counts)
    ragged = routing_statistics(model, batch, positions=[[5, 4], [5]])
    assert ragged.n_tokens == 3


def test_top_tokens_of_expert_neurons():
    model = tiny_moe_model("deepseek_v3")
    adapter = get_adapter(model)
    rows = torch.tensor([[1, 2, 5], [1, 8, 0], [0, -1, 3]])  # routed, shared, dense
    tokens = top_tokens(model, rows, k=3)
    unembed = adapter.unembedding().detach()
    hand = [adapter.moe.layers[1].experts.down_proj[2][:, 5], adapter.moe.layers[1].shared[0].down_proj.weight[:, 0],
            adapter.value_vectors(0)[3]]
    for r, vector in enumerate(hand):
        assert tokens.token_ids[r].tolist() == (unembed @ vector.detach()).topk(3).indices.tolist()
    assert tokens.rows()[0]["expert"] == 2 and tokens.rows()[2]["expert"] == -1


def test_merged_batches_equal_one_batch():
    model = tiny_moe_model("mixtral")
    inputs = random_ids(3, 6, left_pad=(0, 2, 1))
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    batch = Batch(inputs, ["?"] * 3, inputs["attention_mask"].sum(-1))
    whole = routing_statistics(model, batch, positions="all")
    merged = merge_router_statistics([routing_statistics(model, batch.select([0, 2]), positions="all"),
                                      routing_statistics(model, batch.select([1]), positions="all")])
    assert merged.n_tokens == whole.n_tokens == 15 and torch.equal(merged.counts, whole.counts)
    for name in ("fraction", "mean_weight", "mean_score"):
        torch.testing.assert_close(getattr(merged, name), getattr(whole, name))
