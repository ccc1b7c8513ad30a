"""LoRA training (peft) and the LoRA mechanism / pruning experiments on a tiny random Llama, a few steps:
LoRA CNA == the LPI difference of two plain runs (and == brute force at the base run's scale), the original is
untouched, only adapted modules change, pruning by interventions == zeroed weights, coefficients == plain hooks."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from helpers.lpi_by_hand import hand_lpi, hand_sigma
from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.attribute.comparative import comparative
from neuronscope.attribute.log_probability_increase import log_probability_increase
from neuronscope.errors import NeuronscopeError, OptionError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import TargetSet, token_targets
from neuronscope.measure.lora import require_peft, target_loss, train_lora
from neuronscope.measure.lora_pruning import cna_grid, cna_pruning, coefficients, lora_mechanism, promotes
from neuronscope.measure.pruning import task_accuracy

ANSWERS = [5, 9, 12, 20]


def _batch(seed: int = 4) -> Batch:
    inputs = random_batch(4, 6, seed=seed, left_pad=(2, 0, 1, 0))
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return Batch(inputs, ["a", "b", "c", "d"], inputs["attention_mask"].sum(-1))


@pytest.fixture(scope="module")
def setup():
    pytest.importorskip("peft")
    model = tiny_text_model("llama", seed=3)
    batch = _batch()
    targets = token_targets(batch, ANSWERS)
    tuned = train_lora(model, batch, targets, rank=4, steps=6, learning_rate=5e-2, seed=1)
    return model, batch, targets, tuned


def test_target_loss_by_hand():
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]])
    targets = TargetSet(torch.tensor([[1], [0]]), torch.tensor([[1], [0]]), torch.tensor([[True], [True]]),
                        [["x"], ["y"]])
    expected = (-torch.log_softmax(torch.tensor([2.0, 0.0]), -1)[1] - torch.log_softmax(torch.tensor([1.0, 1.0]), -1)[0]) / 2
    assert float(target_loss(logits, targets)) == pytest.approx(float(expected))


def test_missing_peft_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    with pytest.raises(OptionError, match=r"neuronscope\[lora\]"):
        require_peft()
    with pytest.raises(OptionError, match="peft"):
        train_lora(tiny_text_model("llama", seed=3), _batch(), token_targets(_batch(), ANSWERS))


def test_training_lowers_the_loss_and_changes_only_the_adapted_modules(setup):
    model, batch, targets, tuned = setup
    original = tiny_text_model("llama", seed=3)
    for (name, before), after in zip(original.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(before, after), f"the original changed: {name}"
    assert tuned.losses[-1] < tuned.losses[0] and len(tuned.losses) == 6
    assert tuned.config["target_modules"] == ["q_proj", "v_proj"] and tuned.config["trainable_parameters"] > 0
    changed = {name for (name, a), b in zip(model.state_dict().items(), tuned.model.state_dict().values(),
                                            strict=True) if not torch.equal(a, b)}
    assert changed and all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in changed)
    assert type(tuned.model) is type(model)  # merged: plain modules again
    with pytest.raises(NeuronscopeError, match="rank"):
        train_lora(model, batch, targets, rank=0)


def test_lora_cna_equals_the_lpi_difference_of_two_plain_runs(setup):
    model, batch, targets, tuned = setup
    own = comparative(model, batch, targets, model_b=tuned.model, layers=[1], final_norm="own")
    plain = (log_probability_increase(tuned.model, batch, targets, layers=[1]).values
             - log_probability_increase(model, batch, targets, layers=[1]).values)
    torch.testing.assert_close(own.values, plain, rtol=1e-5, atol=1e-6)
    default = comparative(model, batch, targets, model_b=tuned.model, layers=[1])  # the base run's σ for both
    sigma = hand_sigma(model, batch)
    assert (sigma - hand_sigma(tuned.model, batch)).abs().max() > 1e-4
    expected = hand_lpi(tuned.model, batch, ANSWERS, 1, sigma) - hand_lpi(model, batch, ANSWERS, 1, sigma)
    torch.testing.assert_close(default.values[:, 0, 0], expected, rtol=1e-4, atol=1e-5)


def test_mechanism_reports_coefficients_read_by_plain_hooks(setup):
    model, batch, targets, tuned = setup
    mechanism, cna = lora_mechanism(model, tuned.model, batch, targets, top_k=5, answer_ids=ANSWERS, n_random=2)
    grid = cna_grid(cna)
    flat = grid.reshape(-1)
    order = torch.sort(-flat.double(), stable=True).indices[:5]
    d_ff = grid.shape[1]
    assert mechanism.neurons == [[int(i) // d_ff, int(i) % d_ff] for i in order]
    assert mechanism.cna == pytest.approx(flat[order].tolist())

    def by_hook(net):
        seen = {}
        hooks = [net.model.layers[layer].mlp.down_proj.register_forward_pre_hook(
            lambda m, a, layer=layer: seen.__setitem__(layer, a[0].detach())) for layer in range(2)]
        with torch.no_grad():
            net(**batch.inputs)
        for hook in hooks:
            hook.remove()
        return torch.stack([seen[layer][:, -1, index] for layer, index in mechanism.neurons], dim=1).mean(0)

    torch.testing.assert_close(torch.tensor(mechanism.coefficient_base), by_hook(model))
    torch.testing.assert_close(torch.tensor(mechanism.coefficient_lora), by_hook(tuned.model))
    summary = mechanism.summary()
    base, lora = torch.tensor(mechanism.coefficient_base), torch.tensor(mechanism.coefficient_lora)
    assert summary["coefficient_ratio"] == pytest.approx(float(lora.abs().sum() / base.abs().sum()))
    ratios = sorted(float(b) / float(a) for a, b in zip(base.abs(), lora.abs(), strict=True))
    assert summary["median_coefficient_ratio"] == pytest.approx(ratios[(len(ratios) - 1) // 2])  # torch's lower median
    assert len(mechanism.random_coefficient_base) == 10 and summary["top_k"] == 5
    assert promotes(torch.tensor([[3, 5], [1, 2]]), [5]).tolist() == [True, False]
    assert coefficients(model, batch, targets, torch.tensor([[1, 3]])).shape == (4, 1)


def test_pruning_by_interventions_equals_zeroed_weights(setup):
    model, batch, targets, tuned = setup
    grid = torch.arange(48, dtype=torch.float32).view(2, 24)  # keep the highest-numbered neurons of layer 1
    runs = cna_pruning(model, grid, (batch, targets), (batch, targets), layers=[1], keep_fraction=0.25, n_random=1,
                       lora={"rank": 4, "steps": 3, "learning_rate": 5e-2})
    assert [run.name for run in runs] == ["cna", "random 0"] and runs[0].kept == 6
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.model.layers[1].mlp.down_proj.weight[:, :18] = 0  # all but the top 6 (indices 18..23)
    assert runs[0].accuracy_pruned == float(task_accuracy(zeroed, batch, targets)[0].double().mean())
    retrained = train_lora(zeroed, batch, targets, rank=4, steps=3, learning_rate=5e-2, seed=0)
    assert runs[0].losses == pytest.approx(retrained.losses, rel=1e-4)
    assert runs[0].layer_counts == [0, 6] and runs[1].layer_counts == [0, 6]
    assert sorted(runs[0].kept_neurons) == [[1, index] for index in range(18, 24)]
