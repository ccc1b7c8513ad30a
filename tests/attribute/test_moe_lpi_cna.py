"""LPI of expert neurons against a recomputed log-softmax (residual, final residual and weights read from the stock
modules by plain hooks), and CNA with an expert dropped: the condition difference and its files."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_moe import MOE_FAMILIES, random_ids, tiny_moe_model
from neuronscope.attribute import comparative, log_probability_increase
from neuronscope.attribute.moe_comparative import ExpertComparativeScores
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models import get_adapter
from neuronscope.trace.expert_interventions import drop_expert
from neuronscope.trace.experts import capture_experts


def _batch():
    inputs = random_ids(1, 6, seed=2)
    batch = Batch(inputs, ["?"], inputs["attention_mask"].sum(-1))
    return batch, TargetSet(torch.tensor([[9, 4]]), torch.tensor([[5, 3]]), torch.ones(1, 2, dtype=torch.bool),
                            [["a", "b"]])


def _read(model, adapter, batch, layer):
    """The residual the MoE block of ``layer`` reads and the final residual, by plain hooks: ``[T, d]`` each."""
    box = {}
    norm = adapter.layers[layer].post_attention_layernorm
    h1 = norm.register_forward_pre_hook(lambda m, args: box.__setitem__("r", args[0].detach()))
    h2 = adapter.layers[-1].register_forward_hook(
        lambda m, a, out: box.__setitem__("final", (out[0] if isinstance(out, tuple) else out).detach()))
    try:
        model(**batch.inputs)
    finally:
        h1.remove()
        h2.remove()
    return box["r"][0], box["final"][0]


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_lpi_equals_a_recomputed_log_softmax(family):
    model = tiny_moe_model(family)
    adapter = get_adapter(model)
    batch, targets = _batch()
    layer = sorted(adapter.moe.layers)[-1]
    moe = adapter.moe.layers[layer]
    scores = log_probability_increase(model, batch, targets, layers=[layer])
    r, final = _read(model, adapter, batch, layer)
    with capture_experts(model, layers=[layer], positions="all") as acts:
        model(**batch.inputs)
    routing = acts.moe(layer)
    final_norm = model.model.norm
    unembed = model.lm_head.weight.detach().double()
    scale = float(getattr(model.config, "residual_multiplier", 1.0))
    checked = 0
    for column in range(2):
        position, token = int(targets.positions[0, column]), int(targets.token_ids[0, column])
        x = final[position]
        layer_norm = isinstance(final_norm, torch.nn.LayerNorm)
        if layer_norm:
            sigma = (x.var(unbiased=False) + final_norm.eps).sqrt()
        else:
            eps = getattr(final_norm, "variance_epsilon", getattr(final_norm, "eps", None))
            sigma = (x.pow(2).mean() + eps).sqrt()

        # Qwen3.5's RMSNorm multiplies by 1 + weight (its modeling file); the others by weight
        gain = final_norm.weight + 1 if "Qwen3_5" in type(final_norm).__name__ else final_norm.weight

        def readout(v, sigma=sigma, layer_norm=layer_norm, gain=gain):
            if layer_norm:
                return unembed @ (gain * (v - v.mean()) / sigma + final_norm.bias)
            return unembed @ (gain * v / sigma)

        base = readout(r[position]).log_softmax(-1)[token]
        for slot, expert in enumerate(routing.experts[0, position].tolist()):
            for index in (0, 7, 11):
                down = moe.experts.down_proj[expert]
                w = (down[index] if moe.transposed else down[:, index]).detach()
                v = scale * routing.weights[0, position, slot].double() * routing.acts[0, position, slot, index] * w
                expected = readout(r[position] + v).log_softmax(-1)[token] - base
                flat = scores.layout.flat(torch.tensor([[layer, expert, index]]))[0]
                torch.testing.assert_close(scores.values[0, column, flat].double(), expected, rtol=1e-4,
                                           atol=1e-6)
                checked += 1
        unrouted = [e for e in range(moe.n_experts) if e not in routing.experts[0, position].tolist()][0]
        block = scores.layout.block(layer, unrouted)
        assert bool((scores.values[0, column, block] == 0).all())
    assert checked == 2 * 3 * moe.top_k


def test_cna_with_a_dropped_expert(tmp_path):
    model = tiny_moe_model("deepseek_v3")
    batch, targets = _batch()
    cna = comparative(model, batch, targets, interventions_b=[drop_expert(1, 3, mode="zero")], layers=[1],
                      method="contribution")
    assert isinstance(cna, ExpertComparativeScores)
    torch.testing.assert_close(cna.values, cna.condition_b.values - cna.condition_a.values)
    block = cna.layout.block(1, 3)  # expert 3's neurons lose exactly their contribution where it was routed
    torch.testing.assert_close(cna.values[..., block], -cna.condition_a.values[..., block])
    cna.save(tmp_path / "cna")
    again = ExpertComparativeScores.load(tmp_path / "cna")
    assert torch.equal(again.condition_a.values, cna.condition_a.values)
    assert cna.meta["interventions_b"][0]["routing"] == "zero"


def test_cna_lpi_reads_the_second_condition_at_the_original_scale():
    """MoE LPI takes another run's final-norm scale; CNA's default passes condition A's to condition B."""
    from neuronscope.attribute.comparative import final_norm_scale
    from neuronscope.trace import intervene

    model = tiny_moe_model("deepseek_v3")
    batch, targets = _batch()
    dropped = [drop_expert(1, 3, mode="zero")]
    cna = comparative(model, batch, targets, interventions_b=dropped, layers=[1])
    sigma = final_norm_scale(model, batch, targets)
    with intervene(model, dropped):
        given = log_probability_increase(model, batch, targets, layers=[1], final_scale=sigma)
    torch.testing.assert_close(cna.condition_b.values, given.values)
    again = log_probability_increase(model, batch, targets, layers=[1], final_scale=sigma)
    torch.testing.assert_close(again.values, log_probability_increase(model, batch, targets, layers=[1]).values)
