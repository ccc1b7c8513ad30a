"""Expert interventions against oracles on the stock modules: zeroing expert neuron (l, e, i) moves the layer's
output by exactly ``g_e · a_{e,i} · w_{e,i}`` for tokens routed to e and not at all (bit for bit) for the others,
the same as zeroing that value vector in the stock weights by hand; dropping an expert by zeroing equals zeroing
its weights by hand; re-routing never picks the dropped expert and equals a stock router without it; forcing a
routing gives the family's weights of the forced experts."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers.tiny_moe import CORE, MOE_FAMILIES, random_ids, tiny_moe_model
from neuronscope.errors import InputError
from neuronscope.models import get_adapter
from neuronscope.models.moe import expert_value_vectors
from neuronscope.trace import amplify, intervene, set_neurons, suppress
from neuronscope.trace.expert_interventions import drop_expert, force_routing
from neuronscope.trace.experts import capture_experts


def _first_block_output(model, adapter, batch, layer):
    """The MoE block's output ``[B, T, d]`` of ``layer``, read by a plain hook on the stock module."""
    box = {}
    block = getattr(adapter.layers[layer], adapter.moe.family.block)
    handle = block.register_forward_hook(lambda m, a, out: box.__setitem__("y", out[0] if isinstance(out, tuple)
                                                                           else out))
    try:
        model(**batch)
    finally:
        handle.remove()
    return box["y"].detach().reshape(batch["input_ids"].shape[0], batch["input_ids"].shape[1], -1)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_zeroing_an_expert_neuron_moves_its_tokens_by_g_a_w_and_no_other(family):
    model = tiny_moe_model(family)
    adapter = get_adapter(model)
    layer = sorted(adapter.moe.layers)[0]
    moe = adapter.moe.layers[layer]
    batch = random_ids(2, 6)
    with capture_experts(model, layers=[layer], positions="all") as acts:
        base = _first_block_output(model, adapter, batch, layer)
    routing = acts.moe(layer)
    counts = torch.bincount(routing.experts.flatten(), minlength=moe.n_experts)
    expert, index = int(torch.where(counts > 0, counts, 10**6).argmin()), 5  # the least used expert
    with intervene(model, suppress(torch.tensor([[layer, expert, index]]), positions="all")):
        moved = _first_block_output(model, adapter, batch, layer) - base
    with torch.no_grad():  # the oracle: the same value vector zeroed in the stock weights by hand
        vector = expert_value_vectors(moe, expert)[index]
        saved = vector.clone()
        vector.zero_()
        try:
            by_hand = _first_block_output(model, adapter, batch, layer) - base
        finally:
            vector.copy_(saved)
    routed = routing.experts == expert  # [B, T, k]
    g = (routing.weights * routed).sum(-1)
    a = (routing.acts[..., index] * routed).sum(-1)
    expected = -(g * a)[..., None] * saved
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-13)
    torch.testing.assert_close(moved, by_hand, rtol=0, atol=1e-13)
    others = ~routed.any(-1)
    assert bool(others.any()) and bool((moved[others] == 0).all())


@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3", "llama4_text"])
def test_shared_and_dense_neurons(family):
    model = tiny_moe_model(family)
    adapter = get_adapter(model)
    layer = sorted(adapter.moe.layers)[0]
    moe = adapter.moe.layers[layer]
    batch = random_ids(2, 5)
    with capture_experts(model, positions="all") as acts:
        base = _first_block_output(model, adapter, batch, layer)
    shared = moe.n_experts  # the first shared expert's id
    with intervene(model, set_neurons(torch.tensor([[layer, shared, 2]]), 0.5, positions="all")):
        moved = _first_block_output(model, adapter, batch, layer) - base
    routing = acts.moe(layer)
    gate, a = routing.shared_weights[0], routing.shared_acts[0][..., 2]
    expected = (gate * (0.5 - a))[..., None] * expert_value_vectors(moe, shared)[2]
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-13)
    if adapter.moe.dense:  # (layer, -1, i) rows are today's dense neurons
        dense = sorted(adapter.moe.dense)[0]
        dense_base = _first_block_output(model, adapter, batch, dense)
        with intervene(model, amplify(torch.tensor([[dense, -1, 4]]), positions="all")):
            dense_moved = _first_block_output(model, adapter, batch, dense) - dense_base
        expected = acts.dense(dense)[..., 4:5] * adapter.value_vectors(dense)[4]
        torch.testing.assert_close(dense_moved, expected, rtol=0, atol=1e-13)


def _zeroed_expert(moe, expert):
    """Context: expert ``expert``'s down projection (and bias) zeroed in the stock weights, restored after."""
    class Zeroed:
        def __enter__(self):
            self.saved = [(p, p.detach().clone()) for p in self._params()]
            with torch.no_grad():
                for p, _ in self.saved:
                    p.zero_()

        def __exit__(self, *exc):
            with torch.no_grad():
                for p, value in self.saved:
                    p.copy_(value)

        def _params(self):
            yield moe.experts.down_proj[expert]
            if moe.has_bias:
                yield moe.experts.down_proj_bias[expert]

    return Zeroed()


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_drop_expert_by_zeroing_equals_zeroing_its_weights(family):
    model = tiny_moe_model(family)
    adapter = get_adapter(model)
    layer = sorted(adapter.moe.layers)[0]
    moe = adapter.moe.layers[layer]
    batch = random_ids(2, 6)
    with capture_experts(model, layers=[layer], positions="all") as acts:
        base = _first_block_output(model, adapter, batch, layer)
    expert = int(acts.moe(layer).experts[1, 2, 0])
    with intervene(model, drop_expert(layer, expert, positions="all", mode="zero")):
        dropped = _first_block_output(model, adapter, batch, layer)
    with _zeroed_expert(moe, expert):
        by_hand = _first_block_output(model, adapter, batch, layer)
    torch.testing.assert_close(dropped, by_hand, rtol=0, atol=1e-13)
    untouched = ~(acts.moe(layer).experts == expert).any(-1)
    assert torch.equal(dropped[untouched], base[untouched]) and not torch.equal(dropped, base)


def _router_without(moe, expert):
    """A copy of the stock router with expert ``expert`` removed (its rows sliced out)."""
    router = copy.deepcopy(moe.router)
    keep = [e for e in range(moe.n_experts) if e != expert]
    with torch.no_grad():
        for name in ("weight", "bias"):
            param = getattr(router, name, None)
            if isinstance(param, torch.Tensor) and param.shape[0] == moe.n_experts:
                setattr(router, name, torch.nn.Parameter(param[keep].clone()))
    router.num_experts = moe.n_experts - 1
    if hasattr(router, "out_features"):
        router.out_features = moe.n_experts - 1
    return router, torch.tensor(keep)


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "gpt_oss", "granitemoe", "llama4_text"])
def test_reroute_equals_a_stock_router_without_the_expert(family):
    """(Families whose weights renormalise over the chosen experts, where removing an expert from the router and
    excluding it from the choice are the same thing.)"""
    model = tiny_moe_model(family)
    adapter = get_adapter(model)
    layer = sorted(adapter.moe.layers)[0]
    moe = adapter.moe.layers[layer]
    batch = random_ids(2, 6)
    inputs = {}
    handle = moe.router.register_forward_pre_hook(lambda m, args: inputs.__setitem__("x", args[0].detach()))
    with capture_experts(model, layers=[layer], positions="all") as acts:
        base = _first_block_output(model, adapter, batch, layer)
    handle.remove()
    expert = int(acts.moe(layer).experts[0, 1, 0])
    with intervene(model, drop_expert(layer, expert, mode="reroute")), \
            capture_experts(model, layers=[layer], positions="all") as rerouted:
        moved = _first_block_output(model, adapter, batch, layer)
    new = rerouted.moe(layer)
    assert not bool((new.experts == expert).any())
    router, keep = _router_without(moe, expert)
    out = router(inputs["x"].reshape(-1, inputs["x"].shape[-1]))
    if family == "llama4_text":
        scores = out[0]
        stock_experts = torch.topk(out[1], moe.top_k, dim=1)[1]
        stock_weights = scores.gather(1, stock_experts)
    else:
        stock_weights, stock_experts = out[1], out[2]
    order = new.experts.reshape(-1, moe.top_k).sort(-1)
    hand = keep[stock_experts].sort(-1)
    assert torch.equal(order.values, hand.values)
    weights = new.router_weights.reshape(-1, moe.top_k).gather(1, order.indices)
    torch.testing.assert_close(weights, stock_weights.gather(1, hand.indices).to(weights.dtype), rtol=0, atol=1e-6)
    untouched = ~(acts.moe(layer).experts == expert).any(-1)
    assert torch.equal(moved[untouched], base[untouched])


@pytest.mark.parametrize("family", CORE)
def test_force_routing(family):
    model = tiny_moe_model(family)
    adapter = get_adapter(model)
    layer = sorted(adapter.moe.layers)[0]
    moe = adapter.moe.layers[layer]
    forced = list(range(moe.top_k))
    batch = random_ids(1, 5)
    with intervene(model, force_routing(layer, forced, positions=[1, 3])), \
            capture_experts(model, layers=[layer], positions="all") as acts:
        model(**batch)
    routing = acts.moe(layer)
    assert sorted(routing.experts[0, 1].tolist()) == forced and sorted(routing.experts[0, 3].tolist()) == forced
    if family == "mixtral":  # softmax over all experts, renormalised over the forced ones
        probs = routing.logits[0, 1].float().softmax(-1)
        hand = probs[routing.experts[0, 1]] / probs[forced].sum()
        torch.testing.assert_close(routing.weights[0, 1], hand, rtol=0, atol=1e-6)
    with intervene(model, force_routing(layer, forced, positions=[1], weights=[0.25] * moe.top_k)), \
            capture_experts(model, layers=[layer], positions=[1]) as weighted:
        model(**batch)
    assert torch.allclose(weighted.moe(layer).weights.double(), torch.full((1, 1, moe.top_k), 0.25).double())


def test_interventions_run_in_generate_and_are_removed():
    model = tiny_moe_model("mixtral")
    adapter = get_adapter(model)
    moe = adapter.moe.layers[0]
    batch = random_ids(1, 4)
    plain = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with intervene(model, [drop_expert(0, [0, 1], mode="reroute"), *suppress(torch.tensor([[1, 2, 0]]))]), \
            capture_experts(model, layers=[0], positions="last") as acts:
        model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert not bool(torch.isin(acts.moe(0).experts, torch.tensor([0, 1])).any())
    assert not moe.router._forward_hooks and not moe.experts._forward_hooks
    assert torch.equal(model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=0), plain)


def test_bad_expert_interventions_are_refused():
    model = tiny_moe_model("deepseek_v3")
    with pytest.raises(InputError, match="not a mixture-of-experts layer"):
        with intervene(model, drop_expert(0, 1)):
            pass
    with pytest.raises(InputError, match="experts 0..7"):
        with intervene(model, drop_expert(1, 9)):
            pass
    with pytest.raises(InputError, match="exactly top_k = 2"):
        with intervene(model, force_routing(1, [0, 1, 2])):
            pass


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_reroute_never_picks_the_dropped_expert_and_leaves_other_tokens_alone(family):
    model = tiny_moe_model(family)
    adapter = get_adapter(model)
    layer = sorted(adapter.moe.layers)[0]
    batch = random_ids(2, 6)
    with capture_experts(model, layers=[layer], positions="all") as acts:
        base = _first_block_output(model, adapter, batch, layer)
    before = acts.moe(layer)
    expert = int(before.experts[0, 2, 0])
    with intervene(model, drop_expert(layer, expert, mode="reroute")), \
            capture_experts(model, layers=[layer], positions="all") as rerouted:
        moved = _first_block_output(model, adapter, batch, layer)
    after = rerouted.moe(layer)
    hit = (before.experts == expert).any(-1)
    assert not bool((after.experts == expert).any())
    assert torch.equal(after.experts[~hit], before.experts[~hit]) and torch.equal(moved[~hit], base[~hit])
    k = adapter.moe.layers[layer].top_k
    if k > 1:  # the token's other experts stay (group-limited routers too: the groups are kept)
        kept = before.experts[hit][before.experts[hit] != expert].view(-1, k - 1)
        assert all(set(a.tolist()) <= set(b.tolist()) for a, b in zip(kept, after.experts[hit], strict=True))
