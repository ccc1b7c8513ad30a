"""Specificity figures (measure/specificity.py) against brute-force forwards with plain hooks on the stock modules."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from helpers.word_models import save_tiny_llama
from neuronscope.edit.weights import ValueVectorEdit
from neuronscope.measure.baselines import random_neurons_like
from neuronscope.measure.probability import BatchedPrefixScorer
from neuronscope.measure.specificity import SpecificityReport, edit_specificity, neuron_specificity, pooled

PROMPTS = ["the capital of france is", "the colour of the sky is", "grass is", "the cat and the dog",
           "the capital of a country is a", "red blue green"]
TARGETS = ["paris", "blue", "green", "cat", "city", "red"]
GROUPS = {"same template": [4], "other templates": [1, 2, 3, 5]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    folder = save_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", seed=3)
    return LlamaForCausalLM.from_pretrained(folder).eval(), PreTrainedTokenizerFast.from_pretrained(folder)


def answer_probability(model, tokenizer, prompt: str, word: str, zeroed: list[tuple[int, int]] = ()) -> float:
    """P(word) after ``prompt``, with ``zeroed`` neurons' down_proj inputs set to 0 at the last position only."""
    def hook(layer: int):
        def zero(module, args):
            x = args[0].clone()
            for zl, index in zeroed:
                if zl == layer:
                    x[:, -1, index] = 0.0
            return (x,)
        return zero

    handles = [block.mlp.down_proj.register_forward_pre_hook(hook(number))
               for number, block in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1].double()
    finally:
        for handle in handles:
            handle.remove()
    return float(logits.softmax(-1)[tokenizer.convert_tokens_to_ids(word)])


def changes_by_hand(model, tokenizer, rows: list[int], zeroed: list[tuple[int, int]]) -> list[float]:
    out = []
    for row in rows:
        before = answer_probability(model, tokenizer, PROMPTS[row], TARGETS[row])
        out.append((answer_probability(model, tokenizer, PROMPTS[row], TARGETS[row], zeroed) - before) / before)
    return out


def test_neuron_specificity_equals_forwards_with_hooks(tiny) -> None:
    model, tokenizer = tiny
    scorer = BatchedPrefixScorer(model, tokenizer, PROMPTS, TARGETS, chunk_size=4)
    neurons = torch.tensor([[1, 3], [1, 17], [0, 5]])
    report = neuron_specificity(scorer, neurons, target_rows=[0], groups=GROUPS, d_ff=24, n_layers=2, n_random=3,
                                seed=7)
    zeroed = [tuple(row) for row in neurons.tolist()]
    assert report.target["median"] == pytest.approx(changes_by_hand(model, tokenizer, [0], zeroed)[0], rel=1e-4)
    for group, rows in GROUPS.items():
        assert report.background[group]["median"] == pytest.approx(
            statistics.median(changes_by_hand(model, tokenizer, rows, zeroed)), rel=1e-4, abs=1e-9)
        assert report.background[group]["n"] == len(rows)
    # random sets: pcr_against_random draws each group's sets, in order, from one generator seeded once
    generator = torch.Generator().manual_seed(7)
    expected = {}
    for name, rows in [("target", [0]), *GROUPS.items()]:
        draws = random_neurons_like(neurons, 24, n_draws=3, generator=generator, exclude=neurons, n_layers=2)
        expected[name] = [c for draw in draws for c in changes_by_hand(model, tokenizer, rows,
                                                                       [tuple(r) for r in draw.tolist()])]
    assert report.random_target["median"] == pytest.approx(statistics.median(expected["target"]), rel=1e-4)
    for group in GROUPS:
        assert report.random_background[group]["n"] == 3 * len(GROUPS[group])
        assert report.random_background[group]["median"] == pytest.approx(statistics.median(expected[group]),
                                                                           rel=1e-4, abs=1e-9)
    table = report.table()
    assert list(table) == ["target prompts", "background: same template", "background: other templates"]
    assert SpecificityReport.load(report.save(Path(pytest.importorskip("tempfile").mkdtemp()) / "s")).as_dict() \
        == report.as_dict()


def test_edit_specificity_equals_forwards_on_the_edited_weights(tiny) -> None:
    model, tokenizer = tiny
    scorer = BatchedPrefixScorer(model, tokenizer, PROMPTS, TARGETS)
    edit = ValueVectorEdit.erase(model, torch.tensor([[1, 2], [1, 9]]))
    report = edit_specificity(model, scorer, edit, target_rows=[0, 2], groups={"others": [1, 3, 4, 5]}, n_random=0)

    def by_hand(rows: list[int]) -> list[float]:
        before = [answer_probability(model, tokenizer, PROMPTS[r], TARGETS[r]) for r in rows]
        weight = model.model.layers[1].mlp.down_proj.weight
        saved = weight[:, [2, 9]].clone()
        with torch.no_grad():
            weight[:, [2, 9]] = 0.0
        try:
            after = [answer_probability(model, tokenizer, PROMPTS[r], TARGETS[r]) for r in rows]
        finally:
            with torch.no_grad():
                weight[:, [2, 9]] = saved
        return [(a - b) / b for a, b in zip(after, before, strict=True)]

    assert report.target["median"] == pytest.approx(statistics.median(by_hand([0, 2])), rel=1e-4)
    assert report.background["others"]["median"] == pytest.approx(statistics.median(by_hand([1, 3, 4, 5])),
                                                                   rel=1e-4, abs=1e-9)
    assert report.random_target is None and report.intervention == "edit: erase"
    # the model is left unedited
    assert torch.count_nonzero(model.model.layers[1].mlp.down_proj.weight[:, [2, 9]]) > 0


def test_pooled_reports_take_the_median_over_every_pair() -> None:
    first = SpecificityReport("x0", 2)._set({"target": [-0.9], "same": [-0.5, -0.1], "random target": [0.0]})
    second = SpecificityReport("x0", 4)._set({"target": [-0.2], "same": [0.3], "other": [-0.4],
                                              "random target": [0.1]})
    both = pooled([first, second], everything="all others")
    assert both.target == {"median": pytest.approx(-0.55), "mean": pytest.approx(-0.55), "n": 2}
    assert both.background["same"]["median"] == -0.1 and both.background["all others"]["n"] == 4
    assert both.background["all others"]["median"] == pytest.approx(-0.25)
    assert both.random_target["median"] == pytest.approx(0.05) and both.n_neurons == 3
    apart = pooled([first, second], everything="all others", leave_out=("other",))
    assert apart.background["all others"]["n"] == 3 and apart.background["other"]["n"] == 1


def test_an_empty_set_changes_nothing(tiny) -> None:
    model, tokenizer = tiny
    scorer = BatchedPrefixScorer(model, tokenizer, PROMPTS, TARGETS)
    report = neuron_specificity(scorer, torch.zeros(0, 2, dtype=torch.long), target_rows=[0], groups=GROUPS,
                                d_ff=24, n_layers=2, n_random=3)
    assert report.target == {"median": 0.0, "mean": 0.0, "n": 1} and report.random_target is None
    assert report.background["other templates"]["n"] == 4 and report.pcr is None
