"""Capture of MoE models: hooked == plain bit for bit, the per-layer identity (routed + shared experts' neurons
times their value vectors, plus gpt-oss's biases, equal the MoE block's output read by a plain hook) to float64
precision, activations equal a computation by hand from the stock weights, batched == one by one with routing
intact, and ``generate`` records the same routing as a teacher-forced forward."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_moe import CORE, MOE_FAMILIES, random_ids, tiny_moe_model
from neuronscope.errors import NeuronscopeError
from neuronscope.models import get_adapter
from neuronscope.models.moe import expert_bias, expert_value_vectors
from neuronscope.trace.experts import capture_experts


def _block_outputs(adapter):
    """Plain forward hooks on every MoE block: ``{layer: output [B·T or B, T, d]}``."""
    outputs, handles = {}, []
    for layer, moe in adapter.moe.layers.items():
        def hook(module, args, out, layer=layer):
            outputs[layer] = (out[0] if isinstance(out, tuple) else out).detach()
        handles.append(moe.block.register_forward_hook(hook))
    return outputs, handles


def _with_positions(batch):
    batch = dict(batch)
    batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return batch


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_hooked_equals_plain_and_layer_identity(family):
    model = tiny_moe_model(family)
    adapter = get_adapter(model)
    batch = random_ids(2, 6)
    plain = model(**batch).logits
    outputs, handles = _block_outputs(adapter)
    try:
        with capture_experts(model, positions="all") as acts:
            hooked = model(**batch).logits
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(plain, hooked)
    for layer, moe in adapter.moe.layers.items():
        vectors = torch.cat([expert_value_vectors(moe, e) for e in range(moe.n_experts + len(moe.shared))])
        rebuilt = acts.weighted(layer) @ vectors  # [B, T, d]
        if moe.has_bias:
            routing = acts.moe(layer)
            biases = torch.stack([expert_bias(moe, e) for e in range(moe.n_experts)])
            rebuilt = rebuilt + (routing.weights[..., None] * biases[routing.experts]).sum(2)
        torch.testing.assert_close(rebuilt, outputs[layer].reshape(rebuilt.shape), rtol=0, atol=1e-13)


@pytest.mark.parametrize("implementation", ["eager", "batched_mm", "grouped_mm"])
@pytest.mark.parametrize("family", CORE)
def test_hooked_equals_plain_for_every_experts_implementation(family, implementation):
    model = tiny_moe_model(family, dtype=torch.float32, experts_implementation=implementation)
    batch = random_ids(2, 5)
    plain = model(**batch).logits
    with capture_experts(model, positions="all") as acts:
        hooked = model(**batch).logits
    assert torch.equal(plain, hooked)
    assert acts.moe(sorted(get_adapter(model).moe.layers)[0]).acts.abs().sum() > 0


def _silu_expert(x, gate_up, e, f):
    gate, up = (x @ gate_up[e].T).split(f, dim=-1)
    return torch.nn.functional.silu(gate) * up


def _gpt_oss_expert(x, experts, e):
    gate_up = x @ experts.gate_up_proj[e] + experts.gate_up_proj_bias[e]
    gate, up = gate_up[..., 0::2].clamp(max=experts.limit), gate_up[..., 1::2].clamp(-experts.limit, experts.limit)
    return (up + 1) * gate * torch.sigmoid(gate * experts.alpha)


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "gpt_oss"])
def test_activations_equal_a_hand_computation_from_the_stock_weights(family):
    model = tiny_moe_model(family)
    adapter = get_adapter(model)
    layer, moe = next(iter(adapter.moe.layers.items()))
    inputs = {}
    handle = moe.experts.register_forward_pre_hook(lambda m, args: inputs.__setitem__("x", args[0].detach()))
    batch = random_ids(1, 5)
    try:
        with capture_experts(model, layers=[layer], positions="all") as acts:
            model(**batch)
    finally:
        handle.remove()
    routing = acts.moe(layer)
    x = inputs["x"].view(1, 5, -1)
    for t in range(5):
        for slot, e in enumerate(routing.experts[0, t].tolist()):
            if family == "gpt_oss":
                hand = _gpt_oss_expert(x[0, t], moe.experts, e)
            else:
                hand = _silu_expert(x[0, t], moe.experts.gate_up_proj, e, moe.width)
            torch.testing.assert_close(routing.acts[0, t, slot], hand, rtol=0, atol=1e-13)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_batched_equals_one_by_one_with_routing_intact(family):
    model = tiny_moe_model(family)
    adapter = get_adapter(model)
    batch = _with_positions(random_ids(3, 6, left_pad=(0, 2, 1)))
    positions = torch.tensor([[5, 3], [5, 4], [5, 2]])
    with capture_experts(model, positions=positions) as acts:
        model(**batch)
    for row in range(3):
        pad = int((batch["attention_mask"][row] == 0).sum())
        alone = {key: value[row:row + 1, pad:] for key, value in batch.items()}
        alone["position_ids"] = torch.arange(6 - pad)[None]
        with capture_experts(model, positions=(positions[row:row + 1] - pad)) as single:
            model(**alone)
        for layer in adapter.moe.layers:
            full, one = acts.moe(layer), single.moe(layer)
            assert torch.equal(full.experts[row], one.experts[0])
            # DeepSeek / GLM / Mixtral routers compute in float32 even in a float64 model
            tol = 1e-12 if full.weights.dtype == torch.float64 else 1e-6
            torch.testing.assert_close(full.weights[row], one.weights[0], rtol=0, atol=tol)
            torch.testing.assert_close(full.acts[row], one.acts[0], rtol=0, atol=1e-11)
        for layer in adapter.moe.dense:
            torch.testing.assert_close(acts.dense(layer)[row], single.dense(layer)[0], rtol=0, atol=1e-11)


@pytest.mark.parametrize("family", CORE)
def test_generate_records_the_routing_of_a_teacher_forced_forward(family):
    model = tiny_moe_model(family)
    adapter = get_adapter(model)
    batch = random_ids(1, 4)
    with capture_experts(model, positions="last") as acts:
        out = model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=0)
    sequence = out[:, :-1]
    with capture_experts(model, positions=list(range(3, sequence.shape[1]))) as forced:
        model(input_ids=sequence, attention_mask=torch.ones_like(sequence))
    for layer in adapter.moe.layers:
        generated, teacher = acts.moe(layer), forced.moe(layer)
        assert generated.experts.shape[1] == 3
        assert torch.equal(generated.experts, teacher.experts)
        torch.testing.assert_close(generated.acts, teacher.acts, rtol=0, atol=1e-11)


def test_hooks_are_removed_also_on_error():
    model = tiny_moe_model("mixtral")
    moe = next(iter(get_adapter(model).moe.layers.values()))
    with pytest.raises(RuntimeError, match="boom"):
        with capture_experts(model):
            raise RuntimeError("boom")
    assert not moe.experts._forward_hooks and not moe.experts._forward_pre_hooks and not moe.router._forward_hooks


def test_dense_model_is_refused_with_a_pointer():
    from helpers.tiny_models import tiny_text_model

    with pytest.raises(NeuronscopeError, match="dense model"):
        with capture_experts(tiny_text_model("llama")):
            pass


@pytest.mark.parametrize("implementation", ["batched_mm", "grouped_mm"])
@pytest.mark.parametrize("family", [*CORE, "qwen2_moe", "granitemoe"])
def test_activations_read_from_the_stock_implementation_equal_the_recomputed_ones(family, implementation):
    fast = tiny_moe_model(family, dtype=torch.float32, experts_implementation=implementation)
    slow = tiny_moe_model(family, dtype=torch.float32, experts_implementation="eager")
    batch = random_ids(2, 6, left_pad=(0, 1))
    sources = {}
    for name, model in (("fast", fast), ("slow", slow)):
        adapter = get_adapter(model)
        layer = sorted(adapter.moe.layers)[-1]

        def spy(call, name=name):
            sources[name] = call.source

        with capture_experts(model, layers=[layer], positions="all") as acts:
            from neuronscope.trace.expert_hooks import ExpertHooks
            from neuronscope.trace.hooks import HookSet

            with HookSet(adapter) as hooks:
                ExpertHooks(adapter, hooks).on_experts(layer, spy)
                model(**batch)
        sources[name + "_acts"] = acts.moe(layer)
    assert sources["fast"] == "intercepted" and sources["slow"] == "recomputed"
    assert torch.equal(sources["fast_acts"].experts, sources["slow_acts"].experts)
    torch.testing.assert_close(sources["fast_acts"].acts, sources["slow_acts"].acts, rtol=1e-5, atol=1e-5)
    assert "_apply_gate" not in get_adapter(fast).moe.layers[layer].experts.__dict__


def test_keep_grad_activations_give_the_gradient_of_the_output():
    """∂(logit)/∂a of a captured routed neuron equals g · <w, ∂logit/∂(layer output)>, read by a plain hook."""
    model = tiny_moe_model("qwen2_moe")
    adapter = get_adapter(model)
    moe = adapter.moe.layers[1]
    box = {}

    def keep(module, args, out):
        out.retain_grad()
        box["y"] = out

    handle = moe.block.register_forward_hook(keep)
    try:
        with capture_experts(model, layers=[1], positions="last", keep_grad=True) as acts:
            logit = model(**random_ids(1, 5)).logits[0, -1, 9]
    finally:
        handle.remove()
    routing = acts.moe(1)
    leaf = acts.get("moe.acts", 1)
    shared_leaf = acts.get("moe.shared0", 1)
    grads = torch.autograd.grad(logit, [leaf, shared_leaf], retain_graph=True)
    out_grad = torch.autograd.grad(logit, box["y"])[0][0, -1]  # [d]
    for slot, e in enumerate(routing.experts[0, 0].tolist()):
        expected = routing.weights[0, 0, slot].double() * (expert_value_vectors(moe, e) @ out_grad)
        torch.testing.assert_close(grads[0].view(1, 1, 2, -1)[0, 0, slot], expected, rtol=0, atol=1e-12)
    expected = routing.shared_weights[0][0, 0] * (expert_value_vectors(moe, 4) @ out_grad)
    torch.testing.assert_close(grads[1][0, 0], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(routing.probabilities()[0, 0], routing.logits[0, 0].float().softmax(-1))
