"""Value-vector edits of expert neurons: every edit kind writes exactly the listed columns of the fused expert
tensors (routed experts, shared experts, dense layers) and reverts bit for bit, also in bfloat16; files round-trip
to a fresh model; erasing a value vector equals zeroing the neuron's activation; the optimised edit's training
hooks equal the applied edit."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_moe import CORE, random_ids, tiny_moe_model
from neuronscope.edit.experts import expert_delta_hooks
from neuronscope.edit.optimise import optimise_edit
from neuronscope.edit.weights import ValueVectorEdit
from neuronscope.errors import EditMismatchError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet
from neuronscope.models import get_adapter
from neuronscope.models.moe import value_vector
from neuronscope.trace import intervene, suppress


def _rows(adapter) -> torch.Tensor:
    """Two routed neurons, a shared one and a dense one where the model has them."""
    layer = sorted(adapter.moe.layers)[0]
    moe = adapter.moe.layers[layer]
    rows = [[layer, 0, 3], [layer, moe.n_experts - 1, 11]]
    if moe.shared:
        rows.append([layer, moe.n_experts, 1])
    if adapter.moe.dense:
        rows.append([sorted(adapter.moe.dense)[0], -1, 5])
    return torch.tensor(rows)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("family", [*CORE, "qwen2_moe", "llama4_text"])
def test_every_edit_kind_writes_its_columns_and_reverts_bit_for_bit(family, dtype):
    model = tiny_moe_model(family, dtype=dtype, experts_implementation="eager")
    adapter = get_adapter(model)
    rows = _rows(adapter)
    before = _state(model)
    u = adapter.unembedding().detach().float()
    edits = [ValueVectorEdit.erase(model, rows), ValueVectorEdit.noise(model, rows, sigma=0.3, seed=2),
             ValueVectorEdit.token_shift(model, rows, source=5, target=9, strength=0.5, signs="source"),
             ValueVectorEdit.knowledge_neuron(model, rows, 5, 9, 0.2, 0.3)]
    for edit in edits:
        originals = [value_vector(adapter, row).detach().float().clone() for row in rows]
        with edit.applied(model):
            changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
            assert changed and all(("down_proj" in k) for k in changed)
            for row, original, delta in zip(rows, originals, edit.deltas, strict=True):
                expected = (original + delta).to(dtype).float()
                assert torch.equal(value_vector(adapter, row).float(), expected)
            with pytest.raises(EditMismatchError):
                edit.apply(model)  # the fingerprint of the fused columns no longer matches
        after = model.state_dict()
        assert all(torch.equal(after[k], before[k]) for k in before)
    shift = edits[2]
    signs = torch.sign(torch.stack(originals) @ u[5])
    torch.testing.assert_close(shift.deltas, 0.5 * signs[:, None] * (u[9] - u[5]), rtol=0, atol=1e-6)


def test_edit_file_applies_to_a_fresh_model(tmp_path):
    model = tiny_moe_model("deepseek_v3")
    adapter = get_adapter(model)
    rows = _rows(adapter)
    edit = ValueVectorEdit.token_shift(model, rows, source=3, target=8, strength=0.4)
    edit.save(tmp_path / "edit")
    again = ValueVectorEdit.load(tmp_path / "edit")
    assert torch.equal(again.neurons, rows)
    fresh = tiny_moe_model("deepseek_v3")
    with again.applied(fresh):
        with edit.applied(model):
            assert torch.equal(fresh(**random_ids(1, 5)).logits, model(**random_ids(1, 5)).logits)


@pytest.mark.parametrize("family", CORE)
def test_erasing_a_value_vector_equals_zeroing_its_activation(family):
    model = tiny_moe_model(family)
    rows = _rows(get_adapter(model))
    batch = random_ids(2, 6)
    with intervene(model, suppress(rows, positions="all")):
        suppressed = model(**batch).logits
    with ValueVectorEdit.erase(model, rows).applied(model):
        erased = model(**batch).logits
    torch.testing.assert_close(erased, suppressed, rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", [*CORE, "qwen2_moe", "llama4_text"])
def test_training_hooks_equal_the_applied_edit(family):
    model = tiny_moe_model(family)
    adapter = get_adapter(model)
    rows = _rows(adapter)
    # float32 deltas, as the optimiser learns them and as an edit stores them
    deltas = 0.5 * torch.randn(len(rows), adapter.d_model, generator=torch.Generator().manual_seed(4))
    batch = random_ids(2, 6)
    handles = expert_delta_hooks(adapter, rows, deltas)
    try:
        hooked = model(**batch).logits
    finally:
        for handle in handles:
            handle.remove()
    with ValueVectorEdit.from_deltas(model, rows, deltas, "test").applied(model):
        applied = model(**batch).logits
    torch.testing.assert_close(hooked, applied, rtol=1e-6, atol=1e-6)  # dense rows' hooks compute in float32


def test_optimised_edit_of_expert_neurons_promotes_the_target():
    model = tiny_moe_model("mixtral", dtype=torch.float32)
    adapter = get_adapter(model)
    inputs = random_ids(1, 5)
    batch = Batch(inputs, ["?"], inputs["attention_mask"].sum(-1))
    targets = TargetSet(torch.tensor([[7]]), torch.tensor([[4]]), torch.tensor([[True]]), [["x"]])
    rows = torch.tensor([[1, e, i] for e in range(4) for i in range(12)])
    before = model(**batch.inputs).logits[0, 4].log_softmax(-1)[7]
    edit = optimise_edit(model, rows, batch, targets, steps=30, lr=0.2)
    with edit.applied(model):
        after = model(**batch.inputs).logits[0, 4].log_softmax(-1)[7]
    assert after > before and edit.method == "optimised"
    assert not any(m._forward_hooks for m in adapter.moe.layers[1].experts.modules())
