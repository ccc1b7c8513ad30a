"""MoE contribution against oracles on the stock modules: per layer, the neurons' scores plus the bias terms equal
⟨MoE block output, u_t⟩ (read by a plain hook) to float64 precision for every family, with the final norm too;
each neuron's score equals the direct effect of removing it (its value vector zeroed in the stock weights by hand);
the scores' files round-trip."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_moe import CORE, MOE_FAMILIES, random_ids, tiny_moe_model
from neuronscope.attribute import contribution
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models import get_adapter
from neuronscope.models.moe import value_vector
from neuronscope.results import load_result
from neuronscope.results.expert_scores import ExpertNeuronScores


def _batch(rows: int = 2, length: int = 6) -> tuple[Batch, TargetSet]:
    inputs = random_ids(rows, length, left_pad=(0, 1)[:rows])
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    batch = Batch(inputs, ["?"] * rows, inputs["attention_mask"].sum(-1))
    ids = torch.tensor([[5, 9], [7, 11]])[:rows]
    positions = torch.tensor([[5, 3], [5, 4]])[:rows]
    valid = torch.tensor([[True, True], [True, False]])[:rows]
    return batch, TargetSet(ids, positions, valid, [["a", "b"], ["c", "d"]][:rows])


def _layer_outputs(model, batch):
    """``{layer: [B, T, d]}`` of every FFN block (MoE or dense) by plain hooks on the stock modules."""
    adapter = get_adapter(model)
    outputs, handles = {}, []
    for layer, block in enumerate(adapter.layers):
        module = getattr(block, adapter.moe.family.block)

        def hook(m, args, out, layer=layer):
            outputs[layer] = (out[0] if isinstance(out, tuple) else out).detach()
        handles.append(module.register_forward_hook(hook))
    try:
        model(**batch.inputs)
    finally:
        for handle in handles:
            handle.remove()
    shape = batch.input_ids.shape
    return {layer: out.reshape(*shape, -1) for layer, out in outputs.items()}


# the final norm on the core families and on phimoe (a LayerNorm: centring)
@pytest.mark.parametrize(("family", "final_norm"),
                         [(f, False) for f in MOE_FAMILIES] + [(f, True) for f in (*CORE, "phimoe")])
def test_layer_identity_to_float64_precision(family, final_norm):
    model = tiny_moe_model(family)
    adapter = get_adapter(model)
    batch, targets = _batch()
    scores = contribution(model, batch, targets, final_norm=final_norm)
    assert isinstance(scores, ExpertNeuronScores)
    outputs = _layer_outputs(model, batch)
    unembed = adapter.unembedding().detach()
    per_unit = scores.unit_scores()
    residual = {}
    if final_norm:
        handle = adapter.layers[-1].register_forward_hook(
            lambda m, a, out: residual.__setitem__("r", out[0] if isinstance(out, tuple) else out))
        model(**batch.inputs)
        handle.remove()
        norm = adapter.final_norm()
    for (row, column) in targets.valid.nonzero().tolist():
        position, token = int(targets.positions[row, column]), int(targets.token_ids[row, column])
        for layer in range(adapter.n_layers):
            out = outputs[layer][row, position]
            direction = unembed[token]
            if final_norm:
                r = residual["r"][row, position]
                sigma = norm.scale(r)
                if norm.kind == "layer":
                    out = out - out.mean()
                expected = (out * norm.gain * direction).sum() / sigma[0]
            else:
                expected = out @ direction
            layer_units = (scores.layout.units[:, 0] == layer).nonzero()[:, 0]
            total = per_unit[row, column, layer_units].sum()
            torch.testing.assert_close(total, expected.to(total.dtype), rtol=0, atol=1e-12)
    assert bool((scores.values[1, 1] == 0).all())  # the invalid target


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_contribution_equals_removal_of_the_neuron(family):
    """Direct effect at the layer output: zeroing the value vector by hand moves ⟨output, u_t⟩ by −s."""
    model = tiny_moe_model(family)
    adapter = get_adapter(model)
    batch, targets = _batch(1)
    scores = contribution(model, batch, targets)
    base = _layer_outputs(model, batch)
    rows, values = scores.top_k(3, example=0, target=0)
    bottom_rows, bottom_values = scores.top_k(scores.layout.n_neurons, example=0, target=0)
    picks = [*zip(rows.tolist(), values.tolist(), strict=True), (bottom_rows[-1].tolist(), float(bottom_values[-1]))]
    position, token = int(targets.positions[0, 0]), int(targets.token_ids[0, 0])
    direction = adapter.unembedding()[token].detach()
    for row, value in picks:
        vector = value_vector(adapter, row)
        saved = vector.detach().clone()
        with torch.no_grad():
            vector.zero_()
        try:
            removed = _layer_outputs(model, batch)
        finally:
            with torch.no_grad():
                vector.copy_(saved)
        effect = (removed[row[0]][0, position] - base[row[0]][0, position]) @ direction
        torch.testing.assert_close(effect, torch.tensor(-value, dtype=effect.dtype), rtol=0, atol=1e-12)


def test_scores_files_round_trip_and_tables(tmp_path):
    model = tiny_moe_model("deepseek_v3")
    batch, targets = _batch()
    scores = contribution(model, batch, targets)
    path = scores.save(tmp_path / "scores")
    again = load_result(path)
    assert isinstance(again, ExpertNeuronScores) and torch.equal(again.values, scores.values)
    assert again.layout == scores.layout
    sparse = scores.to_sparse(7)
    assert torch.equal(sparse.top_k(5)[0], scores.top_k(5)[0]) or sparse.sparse
    table = scores.top_table(4)
    assert [set(row) for row in table] == [{"layer", "expert", "kind", "neuron", "score"}] * 4
    kinds = {row["kind"] for row in scores.top_table(scores.layout.n_neurons)}
    assert kinds == {"routed", "shared", "dense"}
    csv = scores.write_top_csv(tmp_path / "top.csv", k=3).read_text().splitlines()
    assert csv[0] == "layer,expert,kind,neuron,score" and len(csv) == 4
    torch.testing.assert_close(scores.layer_scores().sum(-1), scores.unit_scores().sum(-1))
    assert "expert" in scores.summary()


def test_dense_selection_math_through_the_flat_grid():
    from neuronscope.aggregate.select import top_k_neurons

    scores = contribution(tiny_moe_model("qwen2_moe"), *_batch())
    grid_rows = top_k_neurons(scores.as_grid().sum(dim=(0, 1)), 5)
    rows = scores.rows(grid_rows[0] if isinstance(grid_rows, tuple) else grid_rows)
    assert torch.equal(rows, scores.top_k(5)[0])


@pytest.mark.parametrize("absolute", [False, True])
def test_top_k_on_the_device_equals_the_dense_top_k(absolute):
    """``top_k`` selection of expert neurons == the dense scores' own top-k (values, ids, bias terms)."""
    model = tiny_moe_model(MOE_FAMILIES[0])
    batch, targets = _batch(2)
    dense = contribution(model, batch, targets)
    sparse = contribution(model, batch, targets, top_k=7, absolute=absolute)
    assert sparse.indices is not None and sparse.values.shape[-1] == 7
    key = dense.values.abs() if absolute else dense.values
    want = key.topk(7, dim=-1).indices
    assert torch.equal(sparse.indices, want)
    assert torch.equal(sparse.values, dense.values.gather(-1, want))
    assert (sparse.bias is None and dense.bias is None) or torch.equal(sparse.bias, dense.bias)
    with pytest.raises(NeuronscopeError, match="top_k"):
        contribution(model, batch, targets, threshold=0.1)
