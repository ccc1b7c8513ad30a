"""CNA pruning: the intervention equals zeroing value vectors; accuracies equal hand-pruned copies of the model."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers.tiny_models import random_batch, tiny_text_model
from neuronscope.attribute.contribution import contribution
from neuronscope.errors import NeuronscopeError
from neuronscope.inputs import Batch
from neuronscope.inputs.targets import token_targets
from neuronscope.measure.pruning import (
    deep_layers,
    prune_experiment,
    pruning_interventions,
    task_accuracy,
    top_neurons_in_layers,
)
from neuronscope.results.scores import NeuronScores
from neuronscope.trace import intervene

D_FF = 24


@pytest.fixture(scope="module")
def model():
    return tiny_text_model("llama", dtype=torch.float64)


def _batch():
    inputs = random_batch(batch=6, length=5, left_pad=(0, 1, 0, 2, 0, 0), seed=4)
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return Batch(inputs, ["?"] * 6, inputs["attention_mask"].sum(-1))


def _targets(model, batch):
    """Rows 0-2: the model's own prediction (correct); rows 3-5: its least likely token (wrong)."""
    with torch.no_grad():
        logits = model(**batch.inputs).logits[:, -1]
    ids = torch.cat([logits[:3].argmax(-1), logits[3:].argmin(-1)])
    return token_targets(batch, ids)


def _pruned_copy(model, kept, layers):
    """By hand: zero the value vectors (down_proj columns) of every non-kept neuron of ``layers``."""
    pruned = copy.deepcopy(model)
    keep = {tuple(row) for row in torch.as_tensor(kept).tolist()}
    with torch.no_grad():
        for layer in layers:
            for index in range(D_FF):
                if (layer, index) not in keep:
                    pruned.model.layers[layer].mlp.down_proj.weight[:, index] = 0.0
    return pruned


def _accuracy_by_hand(model, batch, targets):
    with torch.no_grad():
        logits = model(**batch.inputs).logits[:, -1]
    ids = targets.token_ids[:, 0]
    return (float((logits.argmax(-1) == ids).double().mean()),
            float(logits.softmax(-1)[torch.arange(len(ids)), ids].mean()))


def test_deep_layers_and_top_neurons():
    assert deep_layers(30) == list(range(22, 30))
    assert deep_layers(2) == [1] and deep_layers(4, 0.5) == [2, 3] and deep_layers(1) == [0]
    grid = torch.tensor([[9.0, 0.0, 1.0], [1.0, 2.0, 2.0], [5.0, -1.0, 0.0]])
    assert top_neurons_in_layers(grid, [1, 2], 3).tolist() == [[2, 0], [1, 1], [1, 2]]  # tie: lower index first
    assert top_neurons_in_layers(grid, [1], 0).shape == (0, 2)
    with pytest.raises(NeuronscopeError, match="cannot keep"):
        top_neurons_in_layers(grid, [1], 4)


def test_grid_puts_listed_layers_in_place():
    values = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3) - 5
    scores = NeuronScores(values, meta={"layers": [1, 3]})
    grid = scores.grid(n_layers=4)
    torch.testing.assert_close(grid[[1, 3]], values.sum(dim=(0, 1)))
    assert not grid[[0, 2]].any()
    torch.testing.assert_close(scores.grid(4, absolute=True)[1], values.abs().sum(dim=(0, 1))[0])


def test_pruning_intervention_equals_zeroed_value_vectors(model):
    batch = _batch()
    kept = torch.tensor([[1, 3], [1, 17], [0, 5]])
    with torch.no_grad(), intervene(model, pruning_interventions(kept, [0, 1], D_FF)):
        hooked = model(**batch.inputs).logits
    with torch.no_grad():
        by_hand = _pruned_copy(model, kept, [0, 1])(**batch.inputs).logits
    torch.testing.assert_close(hooked, by_hand, rtol=1e-10, atol=1e-12)


def test_accuracies_equal_hand_pruned_models(model):
    batch = _batch()
    targets = _targets(model, batch)
    correct, _ = task_accuracy(model, batch, targets, batch_size=4)
    assert correct.tolist() == [True] * 3 + [False] * 3
    grid = torch.randn(2, D_FF, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    report = prune_experiment(model, batch, targets, keep=[0, 5, D_FF], scores=grid, layers=[1], n_random=2)
    assert report.full_accuracy == 0.5 and report.layers == [1]
    assert report.full_mean_probability == pytest.approx(_accuracy_by_hand(model, batch, targets)[1], rel=1e-10)
    nothing, five, everything = report.points
    # keeping every neuron changes nothing; keeping none zeroes the layer's FFN output
    assert (everything.accuracy, everything.mean_probability) == pytest.approx(
        (report.full_accuracy, report.full_mean_probability), rel=1e-10)
    assert (nothing.accuracy, nothing.mean_probability) == pytest.approx(
        _accuracy_by_hand(_pruned_copy(model, [], [1]), batch, targets), rel=1e-10)
    assert five.kept == [[1, int(i)] for i in grid[1].argsort(descending=True)[:5]]
    assert (five.accuracy, five.mean_probability) == pytest.approx(
        _accuracy_by_hand(_pruned_copy(model, five.kept, [1]), batch, targets), rel=1e-10)
    assert len(five.random_kept) == 2
    for kept, accuracy, probability in zip(five.random_kept, five.random_accuracy, five.random_mean_probability,
                                           strict=True):
        assert len(kept) == 5 and all(layer == 1 for layer, _ in kept)
        assert (accuracy, probability) == pytest.approx(
            _accuracy_by_hand(_pruned_copy(model, kept, [1]), batch, targets), rel=1e-10)
    assert report.as_dict()["points"][1]["random_accuracy_summary"]["n"] == 2


def test_scores_are_computed_with_the_named_method(model):
    batch = _batch()
    targets = _targets(model, batch)
    report = prune_experiment(model, batch, targets, keep=4, layers=[1], method="contribution", n_random=0)
    grid = contribution(model, batch, targets, layers=[1]).grid(2)
    assert report.points[0].kept == top_neurons_in_layers(grid, [1], 4).tolist()
    with pytest.raises(NeuronscopeError, match="grid"):
        prune_experiment(model, batch, targets, keep=4, scores=torch.zeros(3, D_FF))


# -- the real SmolLM2 ------------------------------------------------------------------------------------------------
FACTS = [("The capital of France is", "Paris"), ("The capital of Japan is", "Tokyo"),
         ("The capital of Germany is", "Berlin"), ("The chemical symbol for gold is", "Au"),
         ("The opposite of hot is", "cold")]


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_keeping_top_deep_neurons_keeps_the_answers_random_ones_do_not(smollm2):
    from neuronscope.inputs import encode_prompts
    from neuronscope.inputs.targets import word_targets

    model, tokenizer = smollm2.model, smollm2.tokenizer
    batch = encode_prompts(tokenizer, [prompt for prompt, _ in FACTS], model=model)
    targets = word_targets(tokenizer, batch, [answer for _, answer in FACTS])
    # the 8 deepest layers hold 8 × 1536 = 12288 neurons; keep 1000 of them (8%)
    report = prune_experiment(model, batch, targets, keep=1000, method="contribution", n_random=2)
    point = report.points[0]
    print("pruning SmolLM2:", report.full_accuracy, point.accuracy, point.random_accuracy, point.mean_probability,
          point.random_mean_probability)
    assert report.layers == list(range(22, 30)) and report.full_accuracy == 1.0
    assert point.accuracy >= 0.8  # measured 1.0 (mean answer probability 0.997)
    assert max(point.random_accuracy) <= 0.4  # measured 0.2 and 0.0 (mean answer probability 0.15 and 0.01)
    assert point.mean_probability > 3 * max(point.random_mean_probability)
