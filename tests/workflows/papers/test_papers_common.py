"""The prefix-cache scorer (prefix cache + last-token run) against full forwards; small pure helpers."""

from __future__ import annotations

import pytest
import torch

from neuronscope.inputs import encode_prompts
from neuronscope.measure.pcr import NeuronGroup, pcr_against_random
from neuronscope.measure.probability import PrefixCacheScorer
from neuronscope.trace import ablate_heads, intervene, suppress
from neuronscope.workflows.papers.arithmetic import addition_prompts
from neuronscope.workflows.papers.bias import pairs_for
from neuronscope.workflows.papers.common import fraction_below
from neuronscope.workflows.papers.knowledge_neurons import knowledge_neurons_of

PROMPTS = ["Once upon a time", "The little dog ran to the", "Lily saw a big"]


def _full_probabilities(model, tokenizer, prompts, targets, interventions=()):
    out = []
    for prompt, target in zip(prompts, targets, strict=True):
        batch = encode_prompts(tokenizer, [prompt], model=model)
        with torch.no_grad(), intervene(model, list(interventions)):
            logits = model(**batch.inputs).logits[0, -1].float()
        out.append(logits.softmax(-1)[target])
    return torch.stack(out)


@pytest.mark.parametrize("batched", [False, True])
def test_scorer_matches_full_forward_under_last_position_interventions(stories260k, batched):
    model, tokenizer = stories260k.model, stories260k.tokenizer
    prompts = PROMPTS if not batched else ["Once upon a time", "Once upon a day", "The cat sat on", "The dog ran to"]
    targets = [5, 17, 42, 7][: len(prompts)]
    scorer = PrefixCacheScorer(model, tokenizer, prompts, targets, batch_equal_lengths=batched)
    neurons = torch.tensor([[0, 3], [2, 10], [4, 100]])
    for interventions in ([], suppress(neurons, positions="last"), ablate_heads(model, [(1, 2)], positions="last")):
        expected = _full_probabilities(model, tokenizer, prompts, targets, interventions)
        got = scorer.probabilities(None, interventions)  # batched: two length groups, each one batch
        if batched:
            got = torch.cat([scorer.probabilities([0, 1], interventions), scorer.probabilities([2, 3], interventions)])
        torch.testing.assert_close(got, expected.double(), rtol=1e-4, atol=1e-6)  # the scorer works in float64
    # the cache is restored after every use: the same call twice gives the same numbers
    torch.testing.assert_close(scorer.probabilities(), scorer.probabilities())


def test_ranks_and_pcr_of_an_identity_intervention(stories260k):
    model, tokenizer = stories260k.model, stories260k.tokenizer
    scorer = PrefixCacheScorer(model, tokenizer, PROMPTS, [5, 17, 42])
    logits = scorer.last_logits()
    expected_ranks = (logits > logits.gather(-1, scorer.targets[:, None])).sum(-1)
    assert scorer.ranks().tolist() == expected_ranks.tolist()
    groups = [NeuronGroup(torch.tensor([[1, 4]]), own=[0, 1], unrelated=[2], name="g")]
    report = pcr_against_random(scorer, groups, factor=1.0, d_ff=model.config.intermediate_size,
                                n_random=2).as_dict()  # ×1 changes nothing: every PCR is 0
    for kind in ("own", "unrelated", "random_own", "random_unrelated"):
        assert abs(report[kind]["mean"]) < 1e-5 and report[kind]["n"] == (2 if "own" in kind else 1) * (
            2 if "random" in kind else 1)


def test_knowledge_neurons_threshold_by_hand():
    scores = torch.tensor([[1.0, 0.1, 0.25], [0.5, 0.3, -2.0]])
    assert knowledge_neurons_of(scores, 0.2).tolist() == [[0, 0], [1, 0], [1, 1], [0, 2]]
    assert knowledge_neurons_of(scores, 0.2, max_neurons=2).tolist() == [[0, 0], [1, 0]]
    assert knowledge_neurons_of(-scores.abs()).shape == (0, 2)


def test_small_helpers():
    sums = addition_prompts("")
    assert len(sums) == 55 and all(int(p[0]) + int(p[2]) == int(a) for p, a in sums)
    assert pairs_for(("A {} works as a",)) == [("A woman works as a", "A man works as a"),
                                               ("A girl works as a", "A boy works as a")]
    assert fraction_below([1, 2, 3], [2, 2, 4]) == pytest.approx(2 / 3)
